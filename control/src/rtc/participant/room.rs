//! The room as a participant sees it: its own roster entry and events, the other
//! participants (from the roster and the room's feed), who speaks, how well each is connected.

use serde::{Deserialize, Serialize};
use sfu_core::ids::{RoomId, SessionId, TrackId};
use sfu_core::proto::{EndReason, MediaKind, Quality};

use super::{Leave, Participant, to_json};
use crate::http::AppState;
use crate::rtc::hybrid::Mode;
use crate::rtc::protocol::{
    ErrorCode, ParticipantInfo, QualityView, ServerMessage, SpeakerView, TrackView,
};
use crate::store::RosterEntry;

/// A participant as the room's roster and events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub identity: String,
    pub name: String,
    pub tracks: Vec<MemberTrack>,
    /// Its connection quality ([`Participant::update_quality`]), in the roster so that a
    /// participant joining later learns it with the rest. Absent until there is one, and in
    /// entries an older control instance wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
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
    pub(super) fn view(&self, identity: &str) -> TrackView {
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
    pub(super) fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            identity: self.identity.clone(),
            name: self.name.clone(),
            tracks: self.tracks.iter().map(|t| t.view(&self.identity)).collect(),
            quality: self.quality,
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
    /// A node passed on a data message of `session`'s client; told by the control instance
    /// holding the node's link, for the session's participant wherever it is.
    SessionData {
        session: SessionId,
        reliable: bool,
        text: String,
    },
    /// A node judged `session`'s connection quality; told by the control instance holding
    /// the node's link, for the session's participant wherever it is.
    SessionQuality {
        session: SessionId,
        quality: Quality,
    },
    /// Push to talk: `identity` asks the room's chair for the floor (`moderator`: its token
    /// may take it at once).
    FloorRequest {
        identity: String,
        moderator: bool,
        /// The client's `req`, echoed in the chair's answer.
        #[serde(default)]
        req: Option<u64>,
    },
    /// Push to talk: `identity` lets go of the floor or its place in line.
    FloorRelease { identity: String },
    /// The chair: who holds the floor and who waits (`ptt` false: no floor any more).
    Floor {
        ptt: bool,
        holder: Option<String>,
        queue: Vec<String>,
    },
    /// The chair's answer to `identity`.
    FloorAnswer {
        identity: String,
        answer: FloorAnswer,
        /// The `req` of the request answered, if this answers one.
        #[serde(default)]
        req: Option<u64>,
    },
    /// Hybrid room, from the chair: `identity` is to move its media to `to` (switch `epoch`).
    Switch {
        identity: String,
        to: Mode,
        epoch: u64,
    },
    /// Hybrid room, from the chair: the room's mode as `identity` joins it, and whether the
    /// room is prewarmed.
    Mode {
        identity: String,
        mode: Mode,
        epoch: u64,
        #[serde(default)]
        prewarm: bool,
    },
    /// Hybrid room, from the chair: participants set up (`on`) or drop their SFU publisher
    /// connections ahead of a move.
    Prewarm { on: bool },
    /// Hybrid room, from the chair: `identity` could not follow the room and must leave.
    Remove { identity: String, reason: String },
    /// Hybrid room: `identity` has moved its media as switch `epoch` asked.
    SwitchAck { identity: String, epoch: u64 },
    /// An admin changed the room's settings: its chair tasks read them again now.
    Settings,
    /// Peer-to-peer signaling (an offer, answer or candidate) from `from` to `to`, relayed.
    P2pSignal {
        from: String,
        to: String,
        data: serde_json::Value,
    },
    /// A participant's data message, checked and stamped with its identity: for `to`, or
    /// everyone else when `None`.
    Message {
        from: String,
        to: Option<String>,
        reliable: bool,
        data: serde_json::Value,
    },
}

/// The chair's answer to one participant's floor request or turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "is", rename_all = "snake_case")]
pub enum FloorAnswer {
    Granted { max_talk_ms: u64 },
    Queued { position: usize },
    Denied { reason: String },
    Revoked { reason: String },
}

impl FloorAnswer {
    fn message(self) -> ServerMessage {
        match self {
            FloorAnswer::Granted { max_talk_ms } => ServerMessage::FloorGranted { max_talk_ms },
            FloorAnswer::Queued { position } => ServerMessage::FloorQueued { position },
            FloorAnswer::Denied { reason } => ServerMessage::FloorDenied { reason },
            FloorAnswer::Revoked { reason } => ServerMessage::FloorRevoked { reason },
        }
    }
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

impl Participant {
    /// The chair asks me to move to `to`: tell the client. Towards the SFU, the server side
    /// is ready at once (subscriptions to everyone), so the client can set up its new path
    /// before dropping the mesh; towards peer to peer, the SFU path stays until the client
    /// acknowledges, its mesh up.
    async fn switch_to(&mut self, to: Mode, epoch: u64) {
        self.switching = Some((to, epoch));
        if to == Mode::Sfu {
            self.set_mode(Mode::Sfu).await;
        }
        self.send(ServerMessage::Switch { to, epoch }, None);
    }

    /// The client moved its media as switch `epoch` asked.
    pub(super) async fn switch_ack(&mut self, epoch: u64) {
        let Some((to, _)) = self.switching.filter(|(_, e)| *e == epoch) else {
            return; // stale, or nothing asked: the chair would ignore it too
        };
        self.switching = None;
        self.epoch = epoch;
        self.set_mode(to).await;
        let identity = self.member.identity.clone();
        self.publish_event(RoomEvent::SwitchAck { identity, epoch })
            .await;
    }

    /// Receive the others through the SFU (every track, as auto-subscribe says) or not at all.
    async fn set_mode(&mut self, mode: Mode) {
        if self.mode == mode {
            return;
        }
        self.mode = mode;
        match mode {
            Mode::Sfu => {
                let tracks: Vec<MemberTrack> = self
                    .others
                    .values()
                    .flat_map(|(_, m)| m.tracks.iter().cloned())
                    .collect();
                for t in &tracks {
                    self.auto_want(t);
                }
            }
            Mode::P2p => self.wanted.clear(),
        }
        self.reconcile().await;
    }

    /// Tell the room what this participant is now.
    pub(super) async fn announce(&mut self) {
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

    pub(super) async fn publish_event(&self, event: RoomEvent) {
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
    pub(super) async fn resync(&mut self) {
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

    pub(super) async fn on_room_event(&mut self, text: &str) -> Option<Leave> {
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
            RoomEvent::SessionData {
                session,
                reliable,
                text,
            } => {
                if self.owns(session) {
                    self.client_data(reliable, text).await;
                }
                return None;
            }
            RoomEvent::SessionQuality { session, quality } => {
                // Acts only on one of mine.
                self.session_quality(session, quality).await;
                return None;
            }
            RoomEvent::Message {
                from,
                to,
                reliable,
                data,
            } => {
                self.deliver(&from, to.as_deref(), reliable, &data).await;
                return None;
            }
            RoomEvent::Floor { ptt, holder, queue } => {
                let message = ServerMessage::Floor { ptt, holder, queue };
                self.send(message.clone(), None);
                self.floor = Some(message);
                return None;
            }
            RoomEvent::FloorAnswer {
                identity,
                answer,
                req,
            } => {
                if identity == self.member.identity {
                    self.send(answer.message(), req);
                }
                return None;
            }
            RoomEvent::FloorRequest { .. }
            | RoomEvent::FloorRelease { .. }
            | RoomEvent::SwitchAck { .. }
            | RoomEvent::Settings => return None,
            RoomEvent::Switch {
                identity,
                to,
                epoch,
            } => {
                if identity == self.member.identity {
                    self.switch_to(to, epoch).await;
                }
                return None;
            }
            RoomEvent::Mode {
                identity,
                mode,
                epoch,
                prewarm,
            } => {
                if identity == self.member.identity {
                    self.switching = None;
                    self.epoch = epoch;
                    self.set_mode(mode).await;
                    self.send(
                        ServerMessage::Mode {
                            mode,
                            epoch,
                            prewarm,
                        },
                        None,
                    );
                }
                return None;
            }
            RoomEvent::Prewarm { on } => {
                if self.mode == Mode::P2p {
                    self.send(ServerMessage::Prewarm { on }, None);
                }
                return None;
            }
            RoomEvent::Remove { identity, reason } => {
                if identity == self.member.identity {
                    self.error(ErrorCode::Removed, reason, None);
                    return Some(Leave::Removed);
                }
                return None;
            }
            RoomEvent::P2pSignal { from, to, data } => {
                if to == self.member.identity && self.others.contains_key(&from) {
                    self.send(ServerMessage::P2pSignal { from, data }, None);
                }
                return None;
            }
        }
        self.reconcile().await;
        None
    }

    /// Someone is (still) in the room as `member`: tell the client what changed.
    pub(super) fn apply_member(&mut self, pid: String, member: Member) {
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
                if let Some(quality) = member.quality.filter(|q| old.quality != Some(*q)) {
                    self.send(
                        ServerMessage::Quality {
                            participants: vec![QualityView {
                                identity: identity.clone(),
                                quality,
                            }],
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
    pub(super) fn send_speakers(&self, tracks: &[TrackId]) {
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

    pub(super) fn remove_member(&mut self, identity: &str, reason: &str) {
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

    /// Renew the roster entry's lease and, since events can be lost while the store's feed
    /// reconnects, resynchronise with the roster. An entry that is gone (its lease ran out
    /// while the store was away) is written again; one owned by a newer join means this one
    /// was replaced.
    pub(super) async fn renew(&mut self) -> Option<Leave> {
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
}
