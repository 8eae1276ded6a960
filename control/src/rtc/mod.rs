//! Meetings: the WebSocket room protocol at `GET /rtc/{room}` (docs/signaling.md).
//!
//! - [`protocol`]: the messages and their parser;
//! - [`socket`]: one WebSocket: the join handshake, limits (size, rate, errors), keepalive;
//! - [`participant`]: one participant, a task that outlives its socket for `rtc.resume_secs`:
//!   its two media sessions, its subscriptions, its view of the room;
//! - [`whip`]: WHIP publishers listed in their rooms as participants;
//! - [`hybrid`]: a room's media mode (peer to peer or through the SFU) and its switches;
//! - [`floor`]: push-to-talk floor control for a channel;
//! - [`chair`]: the one task per room (across control instances) that runs its floor;
//! - [`settings`]: a room's options, set by an admin;
//! - the room itself is the store's roster and event feed ([`crate::store::rooms`]), so
//!   participants on different control instances see each other.

pub mod chair;
pub mod floor;
pub mod hybrid;
pub mod participant;
pub mod protocol;
pub mod settings;
pub mod socket;
pub mod whip;

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sfu_core::ids::{RoomId, SessionId, TrackId};
use sfu_core::proto::{EndReason, Quality};
use tokio::sync::mpsc;

use crate::config::ConfigError;
use crate::http::AppState;
use participant::Input;

/// `[rtc]`: the room protocol's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// How long a participant whose socket dropped stays in its room (media flowing) for a
    /// new socket to resume it.
    pub resume_secs: u64,
    /// Participants per room; 0 = no limit.
    pub max_participants: usize,
    /// Tracks one participant may publish.
    pub max_tracks_per_participant: usize,
    /// The largest message a client may send, in bytes. A client's answer for its receiving
    /// connection grows by about 1.1 KB per track it receives (64 KiB ran out near 29
    /// participants with audio and video); the default covers a full room at the default
    /// limits (50 participants × 8 tracks).
    pub max_message_bytes: usize,
    /// Messages per second a socket may send, sustained ...
    pub messages_per_sec: u32,
    /// ... and at once.
    pub message_burst: u32,
    /// Errors a socket may cause before it is closed (4008).
    pub max_errors: u32,
    /// The largest data-channel message a client may send, in bytes (at most 65536).
    pub data_max_bytes: usize,
    /// Data-channel messages per second a participant may send, sustained ...
    pub data_messages_per_sec: u32,
    /// ... and at once.
    pub data_burst: u32,
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            resume_secs: 15,
            max_participants: 50,
            max_tracks_per_participant: 8,
            // An SDP offer with simulcast is 3-15 KB; a big room's offer of many receiving
            // sections stays well under this.
            max_message_bytes: 512 * 1024,
            messages_per_sec: 20,
            message_burst: 50,
            max_errors: 20,
            data_max_bytes: 16 * 1024,
            data_messages_per_sec: 10,
            data_burst: 20,
        }
    }
}

impl RtcConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| {
            Err(ConfigError::Invalid {
                key: format!("rtc.{key}"),
                reason: why.to_string(),
            })
        };
        if self.max_message_bytes < 4096 {
            return bad(
                "max_message_bytes",
                "must be at least 4096 (an SDP offer does not fit in less)",
            );
        }
        if self.max_tracks_per_participant == 0 {
            return bad("max_tracks_per_participant", "must be at least 1");
        }
        if self.messages_per_sec == 0 || self.message_burst == 0 {
            return bad(
                "messages_per_sec",
                "messages_per_sec and message_burst must be at least 1",
            );
        }
        if self.max_errors == 0 {
            return bad("max_errors", "must be at least 1");
        }
        if self.data_max_bytes == 0
            || self.data_max_bytes > sfu_core::engine::data::MAX_DATA_MESSAGE
        {
            return bad("data_max_bytes", "must be between 1 and 65536");
        }
        if self.data_messages_per_sec == 0 || self.data_burst == 0 {
            return bad(
                "data_messages_per_sec",
                "data_messages_per_sec and data_burst must be at least 1",
            );
        }
        Ok(())
    }
}

/// This control instance's participants, for what reaches them from outside their socket: a
/// socket resuming one, a node ending one of their sessions.
#[derive(Debug, Default)]
pub struct Hub {
    inner: Mutex<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    /// Resume token → (room, identity, participant).
    resumable: HashMap<String, (String, String, mpsc::Sender<Input>)>,
    sessions: HashMap<SessionId, mpsc::Sender<Input>>,
    participants: usize,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Participants on this instance (a gauge for `/metrics`).
    pub fn participants(&self) -> usize {
        self.lock().participants
    }

    fn participant_started(&self) {
        self.lock().participants += 1;
    }

    fn participant_ended(&self) {
        let mut inner = self.lock();
        inner.participants = inner.participants.saturating_sub(1);
    }

    /// A participant can be resumed with `token` (replacing its previous token).
    fn set_resume(
        &self,
        token: &str,
        previous: Option<&str>,
        entry: (String, String, mpsc::Sender<Input>),
    ) {
        let mut inner = self.lock();
        if let Some(previous) = previous {
            inner.resumable.remove(previous);
        }
        inner.resumable.insert(token.to_string(), entry);
    }

    fn forget_resume(&self, token: &str) {
        self.lock().resumable.remove(token);
    }

    /// The participant `token` resumes, if it is still here; the token is used up.
    fn take_resume(&self, token: &str) -> Option<(String, String, mpsc::Sender<Input>)> {
        let mut inner = self.lock();
        let entry = inner.resumable.remove(token)?;
        (!entry.2.is_closed()).then_some(entry)
    }

    fn add_session(&self, session: SessionId, participant: mpsc::Sender<Input>) {
        self.lock().sessions.insert(session, participant);
    }

    fn remove_session(&self, session: SessionId) {
        self.lock().sessions.remove(&session);
    }

    /// A node passed on a data message of `session`'s client: hand it to its participant, if
    /// it is one of ours (a full inbox drops it). Returns whether it is.
    pub fn data(&self, session: SessionId, reliable: bool, text: String) -> bool {
        self.offer(session, Input::Data { reliable, text }, "data message")
    }

    /// A node judged `session`'s connection quality: tell its participant, if it is one of
    /// ours (a full inbox drops it: a participant that far behind has a slow socket to
    /// deal with first; the node's next change is not lost). Returns whether it is.
    pub fn quality(&self, session: SessionId, quality: Quality) -> bool {
        self.offer(
            session,
            Input::Quality { session, quality },
            "connection quality",
        )
    }

    /// Put `input` in the inbox of `session`'s participant without waiting, if it is one of
    /// ours; a full inbox drops it (`what` names it in the log). Returns whether it is.
    fn offer(&self, session: SessionId, input: Input, what: &str) -> bool {
        let participant = self.lock().sessions.get(&session).cloned();
        let Some(participant) = participant else {
            return false;
        };
        if participant.try_send(input).is_err() {
            tracing::debug!(%session, "participant busy; {what} dropped");
        }
        true
    }

    /// A node ended `session`: tell its participant, if it is one of ours. Returns whether
    /// it is.
    pub fn session_ended(&self, session: SessionId, reason: EndReason) -> bool {
        let participant = self.lock().sessions.remove(&session);
        if let Some(participant) = participant {
            let _ = participant.try_send(Input::SessionEnded { session, reason });
            return true;
        }
        false
    }
}

/// A node ranked `room`'s speakers: tell the room's participants, on every control instance.
pub async fn announce_speakers(state: &AppState, room: &RoomId, tracks: Vec<TrackId>) {
    let event = participant::RoomEvent::Speakers { tracks };
    let text = serde_json::to_string(&event).unwrap_or_default();
    if let Err(e) = state.sessions.room_publish(room.as_str(), &text).await {
        tracing::debug!(%room, error = %e, "cannot publish the room's speakers");
    }
}

/// A node whose link this instance holds ended `session` of `room`: tell its participant,
/// here or, through the room's event feed, on another control instance (a participant's
/// sessions may be on a node whose link another instance holds, and only the holder hears
/// the node's events).
pub async fn session_ended(state: &AppState, room: &RoomId, session: SessionId, reason: EndReason) {
    whip::ended(state, session).await;
    if state.rtc_hub.session_ended(session, reason) || !state.sessions.is_shared() {
        return;
    }
    participant::session_ended_elsewhere(state, room, session, reason).await;
}

/// A node whose link this instance holds passed on a data message from `session`'s client:
/// to its participant, here or on another control instance.
pub async fn data_received(
    state: &AppState,
    room: &RoomId,
    session: SessionId,
    reliable: bool,
    text: String,
) {
    if state.rtc_hub.data(session, reliable, text.clone()) || !state.sessions.is_shared() {
        return;
    }
    participant::data_elsewhere(state, room, session, reliable, text).await;
}

/// A node whose link this instance holds judged `session`'s connection quality: to its
/// participant, here or on another control instance, or to its listed WHIP publisher.
pub async fn quality_changed(
    state: &AppState,
    room: &RoomId,
    session: SessionId,
    quality: Quality,
) {
    if whip::quality(state, session, quality).await
        || state.rtc_hub.quality(session, quality)
        || !state.sessions.is_shared()
    {
        return;
    }
    participant::quality_elsewhere(state, room, session, quality).await;
}
