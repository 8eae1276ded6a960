//! A room's options, set by an admin before or while the room is used
//! (`PUT /api/rooms/{room}/settings`, docs/http-api.md) and kept in the store, so every control
//! instance reads the same. A room nobody configured has the defaults: a meeting.

use serde::{Deserialize, Serialize};

use super::hybrid::{HybridConfig, HybridOverride, HybridSettings};
use crate::http::AppState;
use crate::store::StoreError;

/// What kind of room it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomSettings {
    /// A push-to-talk channel: one talker at a time holds the floor (`[ptt]`), and the node
    /// forwards only the holder's audio. A channel always goes through the SFU.
    pub ptt: bool,
    /// The room's own `[hybrid]` thresholds, and whether it starts peer to peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hybrid: Option<HybridOverride>,
}

impl RoomSettings {
    /// Whether the room needs a chair ([`super::chair`]) to run it, with the deployment's
    /// `[hybrid]` settings.
    pub fn chaired(&self, deployment: &HybridSettings) -> bool {
        self.ptt || self.hybrid(deployment).is_some()
    }

    /// The room's mode thresholds if it is a hybrid room (peer to peer while small).
    pub fn hybrid(&self, deployment: &HybridSettings) -> Option<HybridConfig> {
        let hybrid = deployment.with(self.hybrid.as_ref());
        (hybrid.enabled && !self.ptt).then(|| hybrid.config())
    }

    /// Parse what an admin sent and check it against the deployment's `[hybrid]`; the error
    /// says what is wrong, for a 400.
    pub fn parse(body: &[u8], deployment: &HybridSettings) -> Result<Self, String> {
        let settings: RoomSettings =
            serde_json::from_slice(body).map_err(|e| format!("bad room settings: {e}"))?;
        if let Some(o) = &settings.hybrid {
            if settings.ptt && o.enabled == Some(true) {
                return Err(
                    "a push-to-talk channel goes through the SFU: it cannot also be a hybrid room"
                        .into(),
                );
            }
            let merged = deployment.with(Some(o));
            if let Err((key, reason)) = merged.config().check() {
                return Err(format!("bad room settings: hybrid.{key} {reason}"));
            }
        }
        Ok(settings)
    }
}

/// The store's name for a room's settings.
pub const SETTINGS: &str = "settings";

/// `room`'s settings from the store. Settings the store holds but this version cannot read
/// (written by a newer control) count as the defaults, with a warning.
pub async fn load(state: &AppState, room: &str) -> Result<RoomSettings, StoreError> {
    let Some(json) = state.sessions.room_value(room, SETTINGS).await? else {
        return Ok(RoomSettings::default());
    };
    Ok(serde_json::from_str(&json).unwrap_or_else(|e| {
        tracing::warn!(room, error = %e, "unreadable room settings; using the defaults");
        RoomSettings::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(body: &str) -> Result<RoomSettings, String> {
        RoomSettings::parse(body.as_bytes(), &HybridSettings::default())
    }

    #[test]
    fn settings_parse_strictly() {
        assert_eq!(
            parse(r#"{"ptt": true}"#),
            Ok(RoomSettings {
                ptt: true,
                hybrid: None
            })
        );
        assert_eq!(parse("{}"), Ok(RoomSettings::default()));
        assert!(parse(r#"{"ptt": 1}"#).is_err());
        assert!(parse(r#"{"pt": true}"#).is_err());
        assert!(parse("").is_err());
        assert!(parse(r#"{"hybrid": {"sfu_at": 8, "x": 1}}"#).is_err());
    }

    #[test]
    fn a_room_overrides_the_deployment_s_thresholds_within_what_runs() {
        let deployment = HybridSettings::default();
        let room =
            parse(r#"{"hybrid": {"enabled": true, "sfu_at": 4, "p2p_at": 2, "prewarm_at": 3}}"#)
                .expect("valid");
        let config = room.hybrid(&deployment).expect("a hybrid room");
        assert_eq!((config.sfu_at, config.p2p_at, config.prewarm_at), (4, 2, 3));
        assert_eq!(config.ack_timeout, deployment.config().ack_timeout);
        assert!(!RoomSettings::default().chaired(&deployment));
        assert!(room.chaired(&deployment));
        // Thresholds that would flap, and a hybrid channel, are refused with the reason.
        let e = parse(r#"{"hybrid": {"p2p_at": 8}}"#).expect_err("p2p_at at sfu_at");
        assert!(e.contains("hybrid.p2p_at"), "{e}");
        let e = parse(r#"{"ptt": true, "hybrid": {"enabled": true}}"#).expect_err("both");
        assert!(e.contains("push-to-talk"), "{e}");
        // A deployment with hybrid rooms on: every room is one, unless it is a channel or
        // turns it off.
        let on = HybridSettings {
            enabled: true,
            ..HybridSettings::default()
        };
        assert!(RoomSettings::default().hybrid(&on).is_some());
        assert!(
            parse(r#"{"ptt": true}"#)
                .expect("valid")
                .hybrid(&on)
                .is_none()
        );
        let off = parse(r#"{"hybrid": {"enabled": false}}"#).expect("valid");
        assert!(off.hybrid(&on).is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RoomSettings::parse(&bytes, &HybridSettings::default());
        }
    }
}
