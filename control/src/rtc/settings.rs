//! A room's options, set by an admin before or while the room is used
//! (`PUT /api/rooms/{room}/settings`, docs/http-api.md) and kept in the store, so every control
//! instance reads the same. A room nobody configured has the defaults: a meeting.

use serde::{Deserialize, Serialize};

use crate::http::AppState;
use crate::store::StoreError;

/// What kind of room it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomSettings {
    /// A push-to-talk channel: one talker at a time holds the floor (`[ptt]`), and the node
    /// forwards only the holder's audio.
    pub ptt: bool,
}

impl RoomSettings {
    /// Whether the room needs a chair ([`super::chair`]) to run it.
    pub fn chaired(&self) -> bool {
        self.ptt
    }

    /// Parse what an admin sent; the error says what is wrong, for a 400.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("bad room settings: {e}"))
    }
}

/// `room`'s settings from the store. Settings the store holds but this version cannot read
/// (written by a newer control) count as the defaults, with a warning.
pub async fn load(state: &AppState, room: &str) -> Result<RoomSettings, StoreError> {
    let Some(json) = state.sessions.room_settings(room).await? else {
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

    #[test]
    fn settings_parse_strictly() {
        assert_eq!(
            RoomSettings::parse(br#"{"ptt": true}"#),
            Ok(RoomSettings { ptt: true })
        );
        assert_eq!(RoomSettings::parse(b"{}"), Ok(RoomSettings::default()));
        assert!(RoomSettings::parse(br#"{"ptt": 1}"#).is_err());
        assert!(RoomSettings::parse(br#"{"pt": true}"#).is_err());
        assert!(RoomSettings::parse(b"").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RoomSettings::parse(&bytes);
        }
    }
}
