//! A participant's connection quality (docs/signaling.md, "Connection quality"): the worse of
//! what its node says of its two connections. The node judges each session and reports only
//! changes; the participant combines them and, when the result changes, tells its client and
//! the room. The room hears it through the participant's roster entry and `updated` event, so
//! that a participant joining later finds it in `joined` like the rest of the room.

use sfu_core::ids::{RoomId, SessionId};
use sfu_core::proto::{EndReason, Quality, SessionKind};

use super::{Participant, RoomEvent, to_json};
use crate::http::AppState;
use crate::rtc::protocol::{QualityView, ServerMessage};

/// What the node last said of each of the participant's connections.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Qualities {
    publisher: Option<Quality>,
    subscriber: Option<Quality>,
}

impl Qualities {
    fn slot(&mut self, kind: SessionKind) -> &mut Option<Quality> {
        match kind {
            SessionKind::Publish => &mut self.publisher,
            SessionKind::Subscribe => &mut self.subscriber,
        }
    }

    /// A new connection of `kind` replaces the one before: what was said of that no longer
    /// holds, and nothing is known of the new one until its node judges it.
    pub(super) fn started(&mut self, kind: SessionKind) {
        *self.slot(kind) = None;
    }

    /// The connection of `kind` ended for `reason`. Closed on request (the participant left,
    /// an operator ended it) it says nothing of the network; gone any other way (its ICE timed
    /// out, its node stopped) the participant is cut off from that direction: lost, until a
    /// new connection of the kind is judged.
    pub(super) fn ended(&mut self, kind: SessionKind, reason: EndReason) {
        *self.slot(kind) = (reason != EndReason::Closed).then_some(Quality::Lost);
    }

    /// The worse of the two, if the node judged either.
    fn worst(&self) -> Option<Quality> {
        [self.publisher, self.subscriber]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A node judged `session`'s quality, but that session's participant is not on this control
/// instance: hand it to whichever instance has it, through the room's feed.
pub async fn quality_elsewhere(
    state: &AppState,
    room: &RoomId,
    session: SessionId,
    quality: Quality,
) {
    let event = to_json(&RoomEvent::SessionQuality { session, quality });
    if let Err(e) = state.sessions.room_publish(room.as_str(), &event).await {
        tracing::debug!(%room, %session, error = %e, "cannot pass on a connection quality");
    }
}

impl Participant {
    /// The node judged `session`'s connection (ignored unless it is one of mine).
    pub(super) async fn session_quality(&mut self, session: SessionId, quality: Quality) {
        let kind = if self
            .publisher
            .as_ref()
            .is_some_and(|c| c.session == session)
        {
            SessionKind::Publish
        } else if self
            .subscriber
            .as_ref()
            .is_some_and(|c| c.session == session)
        {
            SessionKind::Subscribe
        } else {
            return;
        };
        *self.qualities.slot(kind) = Some(quality);
        if self.refresh_quality() {
            self.announce().await;
        }
    }

    /// Bring my quality in line with my connections'; when it changed, tell my client and
    /// return true: the caller then tells the room ([`Participant::announce`]). While no
    /// connection has been judged (none yet, or new ones), the last quality stands.
    pub(super) fn refresh_quality(&mut self) -> bool {
        let Some(quality) = self.qualities.worst() else {
            return false;
        };
        if self.member.quality == Some(quality) {
            return false;
        }
        self.member.quality = Some(quality);
        tracing::debug!(room = %self.room, identity = %self.member.identity, quality = quality.as_str(), "connection quality");
        self.send(
            ServerMessage::Quality {
                participants: vec![QualityView {
                    identity: self.member.identity.clone(),
                    quality,
                }],
            },
            None,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worse_connection_decides_and_a_lost_one_stays_lost_until_replaced() {
        let mut q = Qualities::default();
        assert_eq!(q.worst(), None);
        *q.slot(SessionKind::Publish) = Some(Quality::Excellent);
        assert_eq!(q.worst(), Some(Quality::Excellent));
        *q.slot(SessionKind::Subscribe) = Some(Quality::Poor);
        assert_eq!(q.worst(), Some(Quality::Poor));
        q.ended(SessionKind::Publish, EndReason::IceTimeout);
        assert_eq!(q.worst(), Some(Quality::Lost));
        q.started(SessionKind::Publish);
        assert_eq!(q.worst(), Some(Quality::Poor));
        q.ended(SessionKind::Subscribe, EndReason::Closed);
        assert_eq!(q.worst(), None, "a closed connection says nothing");
    }
}
