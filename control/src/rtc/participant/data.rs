//! Data messages (docs/signaling.md, "Data messages"): a client sends on a data channel of its
//! receiving connection; the node passes the text here; the sender's participant checks it
//! (size, rate, form, addressee), stamps it with its identity and puts it on the room's feed;
//! every addressed participant, on any control instance, has its node send it on its own
//! client's channel. A client never names the sender: `from` is always the authenticated one.

use serde::{Deserialize, Serialize};
use sfu_core::ids::RoomId;
use sfu_core::proto::SendData;
use sfu_core::{NodeRequest, NodeResponse};

use super::{Participant, RoomEvent, to_json};
use crate::http::AppState;
use crate::rtc::protocol::ErrorCode;

/// What a client sends on its data channel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Outgoing {
    /// One participant's identity; absent: everyone else in the room.
    #[serde(default)]
    to: Option<String>,
    data: serde_json::Value,
}

/// What a client receives on its data channel.
#[derive(Debug, Serialize)]
struct Incoming<'a> {
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    data: &'a serde_json::Value,
}

/// A node passed on `session`'s data message, but that session's participant is not on this
/// control instance: hand it to whichever instance has it, through the room's feed.
pub async fn data_elsewhere(
    state: &AppState,
    room: &RoomId,
    session: sfu_core::ids::SessionId,
    reliable: bool,
    text: String,
) {
    let event = to_json(&RoomEvent::SessionData {
        session,
        reliable,
        text,
    });
    if let Err(e) = state.sessions.room_publish(room.as_str(), &event).await {
        tracing::debug!(%room, %session, error = %e, "cannot pass on a data message");
    }
}

impl Participant {
    /// My client sent `text` on a data channel of one of my sessions.
    pub(super) async fn client_data(&mut self, reliable: bool, text: String) {
        let limits = &self.state.rtc;
        if !self.data_budget.take(std::time::Instant::now()) {
            self.error(
                ErrorCode::RateLimited,
                format!(
                    "data message dropped: more than {} a second (rtc.data_messages_per_sec)",
                    limits.data_messages_per_sec
                ),
                None,
            );
            return;
        }
        if text.len() > limits.data_max_bytes {
            self.error(
                ErrorCode::TooLarge,
                format!(
                    "data message dropped: {} bytes, the limit is {} (rtc.data_max_bytes)",
                    text.len(),
                    limits.data_max_bytes
                ),
                None,
            );
            return;
        }
        let outgoing = match serde_json::from_str::<Outgoing>(&text) {
            Ok(o) => o,
            Err(e) => {
                self.error(
                    ErrorCode::BadMessage,
                    format!("data message dropped: not {{\"to\"?, \"data\"}}: {e}"),
                    None,
                );
                return;
            }
        };
        if let Some(to) = &outgoing.to {
            if !self.others.contains_key(to) {
                self.error(
                    ErrorCode::UnknownParticipant,
                    format!("data message dropped: no participant {to:?} in the room"),
                    None,
                );
                return;
            }
        }
        self.publish_event(RoomEvent::Message {
            from: self.member.identity.clone(),
            to: outgoing.to,
            reliable,
            data: outgoing.data,
        })
        .await;
    }

    /// A message someone in the room sent: pass it to my client if it is for me.
    pub(super) async fn deliver(
        &self,
        from: &str,
        to: Option<&str>,
        reliable: bool,
        data: &serde_json::Value,
    ) {
        if from == self.member.identity || to.is_some_and(|to| to != self.member.identity) {
            return;
        }
        let Some(connection) = &self.subscriber else {
            return; // no receiving connection yet: nothing to send on
        };
        let Some(client) = self.state.nodes.client(&connection.node) else {
            return;
        };
        let text = to_json(&Incoming { from, to, data });
        let request = NodeRequest::SendData(SendData {
            session: connection.session,
            reliable,
            text,
        });
        match client.call(request).await {
            NodeResponse::Done => {}
            other => {
                tracing::debug!(room = %self.room, identity = %self.member.identity, answer = ?other, "data message not delivered")
            }
        }
    }
}
