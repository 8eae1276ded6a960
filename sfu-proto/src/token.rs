//! Access-token claims (docs/http-api.md): what control verifies and what every client that
//! mints tokens (tools, backends) signs. Signing and verifying (HS256 JWT, the API key as the
//! header's `kid`) are the callers' business; the claims and their names live here once.

use serde::{Deserialize, Serialize};

/// The public development key pair `control dev` trusts. Anyone can mint tokens with it.
pub const DEV_API_KEY: &str = "devkey";
/// Secret of [`DEV_API_KEY`].
pub const DEV_API_SECRET: &str = "devsecret";

/// What a token allows in its room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
    /// End or change anyone's session in the room.
    pub admin: bool,
    /// Push to talk: a request for the floor takes it at once (the talker is queued first).
    /// `admin` implies it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub moderator: bool,
}

impl Grants {
    pub const PUBLISH: Grants = Grants {
        publish: true,
        subscribe: false,
        admin: false,
        moderator: false,
    };
    pub const SUBSCRIBE: Grants = Grants {
        publish: false,
        subscribe: true,
        admin: false,
        moderator: false,
    };
    pub const PUBLISH_SUBSCRIBE: Grants = Grants {
        publish: true,
        subscribe: true,
        admin: false,
        moderator: false,
    };
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed it.
    pub iss: String,
    /// Identity of the participant.
    pub sub: String,
    pub room: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default)]
    pub grants: Grants,
}

impl Claims {
    /// Claims issued by `api_key` at `iat` (seconds since the Unix epoch), valid `ttl_secs`.
    pub fn new(
        api_key: &str,
        room: &str,
        identity: &str,
        grants: Grants,
        iat: u64,
        ttl_secs: u64,
    ) -> Self {
        Self {
            iss: api_key.to_string(),
            sub: identity.to_string(),
            room: room.to_string(),
            iat,
            exp: iat.saturating_add(ttl_secs),
            grants,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_serialize_with_the_documented_names() {
        let claims = Claims::new("k", "demo", "alice", Grants::PUBLISH, 100, 60);
        let json = serde_json::to_value(&claims).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "iss": "k", "sub": "alice", "room": "demo", "iat": 100, "exp": 160,
                "grants": {"publish": true, "subscribe": false, "admin": false}
            })
        );
        // Grants may be partly or wholly absent: what is absent is not granted.
        let partial: Claims = serde_json::from_str(
            r#"{"iss":"k","sub":"a","room":"r","iat":1,"exp":2,"grants":{"subscribe":true}}"#,
        )
        .expect("parse");
        assert_eq!(partial.grants, Grants::SUBSCRIBE);
    }
}
