//! WHIP publishers in meeting rooms: a WHIP session's tracks appear in its room as a
//! participant named by the token's identity, so meeting participants see and receive it.
//! Such a participant has no socket and no task: control writes its roster entry when the
//! node answers the offer, renews it with the others ([`renew`]), and removes it when the
//! session ends (the node's event, or, when another control instance heard that, the store no
//! longer knowing the session).

use std::collections::HashMap;
use std::sync::Mutex;

use sfu_core::SessionCreated;
use sfu_core::ids::{RoomId, SessionId};
use sfu_core::proto::Quality;

use super::participant::{Member, MemberTrack, RoomEvent};
use crate::http::AppState;
use crate::store::RosterEntry;

/// One WHIP publisher listed in its room.
#[derive(Debug, Clone)]
struct Listed {
    room: RoomId,
    pid: String,
    member: Member,
}

/// The WHIP publishers this control instance listed.
#[derive(Debug, Default)]
pub struct WhipMembers {
    listed: Mutex<HashMap<SessionId, Listed>>,
}

impl WhipMembers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Listed>> {
        self.listed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

async fn publish(state: &AppState, room: &RoomId, event: &RoomEvent) {
    if let Err(e) = state
        .sessions
        .room_publish(room.as_str(), &to_json(event))
        .await
    {
        tracing::warn!(%room, error = %e, "cannot publish a room event");
    }
}

/// WHIP session `created` of `identity` started in `room`: list it, unless a participant of
/// that identity is in the room already (a meeting participant publishing over WHIP too: its
/// WHIP tracks are then not listed) or the room is full.
pub async fn published(state: &AppState, room: &RoomId, identity: &str, created: &SessionCreated) {
    if created.tracks.is_empty() {
        return;
    }
    match state.sessions.roster(room.as_str()).await {
        Ok(roster) if roster.iter().any(|e| e.identity == identity) => {
            tracing::info!(%room, %identity, "WHIP publisher not listed: its identity is in the room already");
            return;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%room, error = %e, "cannot read the room's roster for a WHIP publisher");
            return;
        }
    }
    let pid = format!("{:016x}", rand::random::<u64>());
    let member = Member {
        identity: identity.to_string(),
        name: identity.to_string(),
        tracks: created
            .tracks
            .iter()
            .map(|t| MemberTrack {
                id: format!("{pid}-{}", t.track.index),
                track: t.track,
                kind: t.kind,
                source: match t.kind {
                    sfu_core::proto::MediaKind::Audio => "microphone".into(),
                    sfu_core::proto::MediaKind::Video => "camera".into(),
                },
                layers: t.layers,
                muted: false,
            })
            .collect(),
        quality: None,
    };
    let entry = RosterEntry {
        identity: identity.to_string(),
        pid: pid.clone(),
        data: to_json(&member),
    };
    match state
        .sessions
        .roster_put(room.as_str(), entry, state.rtc.max_participants)
        .await
    {
        Ok(crate::store::RosterJoin::Joined) => {}
        Ok(crate::store::RosterJoin::Full) => {
            tracing::info!(%room, %identity, "WHIP publisher not listed: the room is full (rtc.max_participants)");
            return;
        }
        Err(e) => {
            tracing::warn!(%room, error = %e, "cannot list a WHIP publisher");
            return;
        }
    }
    state.rtc_whip.lock().insert(
        created.session,
        Listed {
            room: room.clone(),
            pid: pid.clone(),
            member: member.clone(),
        },
    );
    publish(state, room, &RoomEvent::Joined { pid, member }).await;
}

/// The node judged `session`'s connection quality: if it is a WHIP publisher this instance
/// listed, that is its participant's quality (it has no other connection). Returns whether it
/// is one.
pub async fn quality(state: &AppState, session: SessionId, quality: Quality) -> bool {
    let listed = {
        let mut listed = state.rtc_whip.lock();
        let Some(l) = listed.get_mut(&session) else {
            return false;
        };
        if l.member.quality == Some(quality) {
            return true;
        }
        l.member.quality = Some(quality);
        l.clone()
    };
    let Listed { room, pid, member } = listed;
    if let Err(e) = state
        .sessions
        .roster_update(room.as_str(), &member.identity, &pid, &to_json(&member))
        .await
    {
        tracing::debug!(%room, error = %e, "cannot update a WHIP publisher's roster entry");
    }
    publish(state, &room, &RoomEvent::Updated { pid, member }).await;
    true
}

/// Session `session` ended: if it is a listed WHIP publisher, it leaves its room.
pub async fn ended(state: &AppState, session: SessionId) {
    let listed = state.rtc_whip.lock().remove(&session);
    if let Some(listed) = listed {
        leave(state, listed).await;
    }
}

async fn leave(state: &AppState, listed: Listed) {
    let Listed { room, pid, member } = listed;
    if let Err(e) = state
        .sessions
        .roster_remove(room.as_str(), &member.identity, &pid)
        .await
    {
        tracing::warn!(%room, error = %e, "cannot remove a WHIP publisher's roster entry");
    }
    let event = RoomEvent::Left {
        pid,
        identity: member.identity,
        reason: "left".into(),
    };
    publish(state, &room, &event).await;
}

/// Renew the listed WHIP publishers' roster leases; those whose session the store no longer
/// knows (it ended, and another control instance heard it) leave their rooms.
pub async fn renew(state: &AppState) {
    let listed: Vec<(SessionId, Listed)> = state
        .rtc_whip
        .lock()
        .iter()
        .map(|(s, l)| (*s, l.clone()))
        .collect();
    for (session, l) in listed {
        match state.sessions.get(session).await {
            Ok(Some(_)) => {
                let data = to_json(&l.member);
                let room = l.room.as_str();
                if let Err(e) = state
                    .sessions
                    .roster_update(room, &l.member.identity, &l.pid, &data)
                    .await
                {
                    tracing::debug!(%room, error = %e, "cannot renew a WHIP publisher's roster entry");
                }
            }
            Ok(None) => ended(state, session).await,
            Err(_) => {} // the store is away: try again next time
        }
    }
}
