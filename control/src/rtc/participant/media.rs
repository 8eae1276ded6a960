//! A participant's two connections (publisher and subscriber sessions on the room's node)
//! and what the subscriber connection's sections carry.

use sfu_core::ids::{Layer, NodeId, SessionId, TrackId};
use sfu_core::proto::{EndReason, MediaKind, SetSubscription, Subscribe, SubscribePolicy};
use sfu_core::{NodeError, NodeRequest, NodeResponse, SessionCreated, SessionKind};

use super::{MemberTrack, Participant};
use crate::http::{AppState, OfferError, create_session};
use crate::rtc::protocol::{ErrorCode, ServerMessage, SlotView, TrackOptions};

/// One of the participant's media sessions.
#[derive(Debug, Clone)]
pub(super) struct Connection {
    pub(super) session: SessionId,
    pub(super) node: NodeId,
}

/// A receiving section of the subscriber connection.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) mid: String,
    pub(super) kind: MediaKind,
    /// The public id of the track it carries.
    pub(super) carries: Option<String>,
    pub(super) max_layer: u8,
    pub(super) paused: bool,
}

/// A track the participant wants to receive.
#[derive(Debug, Clone)]
pub(super) struct Wanted {
    pub(super) track: TrackId,
    pub(super) kind: MediaKind,
    pub(super) max_layer: u8,
    pub(super) paused: bool,
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

pub(super) fn clamp_layer(layer: u8) -> u8 {
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

impl Participant {
    /// `publish`: create the publisher session, or renegotiate it.
    pub(super) async fn publish(
        &mut self,
        req: Option<u64>,
        sdp: String,
        options: Vec<TrackOptions>,
    ) {
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
                .map(|s| crate::rtc::protocol::truncate(s, crate::rtc::protocol::MAX_SOURCE_CHARS))
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
    pub(super) async fn subscriber_offer(&mut self, req: Option<u64>, sdp: String) {
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
    pub(super) async fn offer(
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
    pub(super) async fn create(
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
        self.qualities.started(kind);
        match kind {
            SessionKind::Publish => self.publisher = Some(connection),
            SessionKind::Subscribe => self.subscriber = Some(connection),
        }
        Ok(placed.created)
    }

    pub(super) async fn set_subscription(
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

    /// Make the subscriber sessions' sections carry what the participant wants: free the
    /// sections of tracks no longer wanted, put wanted tracks on free sections of their kind,
    /// and ask for more sections when there are too few.
    pub(super) async fn reconcile(&mut self) {
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

    /// Whether `session` is one of my connections.
    pub(super) fn owns(&self, session: SessionId) -> bool {
        [&self.publisher, &self.subscriber]
            .into_iter()
            .flatten()
            .any(|c| c.session == session)
    }

    pub(super) async fn session_ended(&mut self, session: SessionId, reason: EndReason) {
        if self.owns(session) {
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
            self.qualities.ended(SessionKind::Publish, reason);
            let had_tracks = !self.member.tracks.is_empty();
            self.member.tracks.clear();
            // One announcement for both changes.
            if self.refresh_quality() | had_tracks {
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
            self.qualities.ended(SessionKind::Subscribe, reason);
            if self.refresh_quality() {
                self.announce().await;
            }
            self.reconcile().await;
        }
    }

    pub(super) fn auto_want(&mut self, track: &MemberTrack) {
        // Peer to peer, the others' media comes over the mesh, not from the SFU.
        if self.auto_subscribe && self.mode == super::Mode::Sfu {
            self.wanted.entry(track.id.clone()).or_insert(Wanted {
                track: track.track,
                kind: track.kind,
                max_layer: 2,
                paused: false,
            });
        }
    }

    pub(super) fn find_track(&self, id: &str) -> Option<&MemberTrack> {
        self.others
            .values()
            .flat_map(|(_, m)| m.tracks.iter())
            .find(|t| t.id == id)
    }
}
