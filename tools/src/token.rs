//! Access tokens as `control` expects them (docs/http-api.md): HS256 JWTs whose header `kid` is
//! the API key, with room, identity, validity and grants as claims.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The claims, grants and development key pair, as control verifies them.
pub use sfu_proto::token::{Claims, DEV_API_KEY, DEV_API_SECRET, Grants};

/// Claims issued by `api_key` at `now`, valid for `ttl`.
pub fn claims_at(
    api_key: &str,
    room: &str,
    identity: &str,
    grants: Grants,
    now: SystemTime,
    ttl: Duration,
) -> Claims {
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Claims::new(api_key, room, identity, grants, iat, ttl.as_secs())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign token: {0}")]
pub struct TokenError(#[from] jsonwebtoken::errors::Error);

/// Signs `claims` with HS256 under `api_key` / `secret`.
pub fn mint(claims: &Claims, api_key: &str, secret: &str) -> Result<String, TokenError> {
    install_crypto_provider();
    let header = Header {
        alg: Algorithm::HS256,
        kid: Some(api_key.to_string()),
        ..Header::default()
    };
    Ok(jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// jsonwebtoken picks its backend from its features, and panics when feature unification in
/// the workspace enables more than one. Installing aws-lc-rs explicitly keeps signing working
/// either way; losing the race to another installer is fine (any provider signs HS256).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}

/// A token signed with the development key pair, valid for an hour from now.
pub fn dev_token(room: &str, identity: &str, grants: Grants) -> Result<String, TokenError> {
    let claims = claims_at(
        DEV_API_KEY,
        room,
        identity,
        grants,
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    mint(&claims, DEV_API_KEY, DEV_API_SECRET)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

    use super::*;

    #[test]
    fn dev_token_carries_the_documented_claims() {
        let token = dev_token("lobby", "alice", Grants::PUBLISH).expect("signs");
        let header = decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.kid.as_deref(), Some(DEV_API_KEY));

        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = decode::<Claims>(
            &token,
            &DecodingKey::from_secret(DEV_API_SECRET.as_bytes()),
            &validation,
        )
        .expect("valid signature");
        let c = data.claims;
        assert_eq!(c.iss, DEV_API_KEY);
        assert_eq!(c.sub, "alice");
        assert_eq!(c.room, "lobby");
        assert_eq!(c.exp - c.iat, 3600);
        assert_eq!(c.grants, Grants::PUBLISH);
    }

    #[test]
    fn claims_serialize_with_the_documented_names() {
        let c = claims_at(
            "k",
            "r",
            "i",
            Grants::SUBSCRIBE,
            UNIX_EPOCH + Duration::from_secs(100),
            Duration::from_secs(60),
        );
        let json = serde_json::to_value(&c).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "iss": "k", "sub": "i", "room": "r", "iat": 100, "exp": 160,
                "grants": {"publish": false, "subscribe": true, "admin": false}
            })
        );
    }

    #[test]
    fn wrong_secret_fails_verification() {
        let token = dev_token("lobby", "bob", Grants::SUBSCRIBE).expect("signs");
        let r = decode::<Claims>(
            &token,
            &DecodingKey::from_secret(b"not-the-secret"),
            &Validation::new(Algorithm::HS256),
        );
        assert!(r.is_err());
    }
}
