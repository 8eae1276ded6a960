//! Access tokens: HS256 JWTs naming a room, an identity and grants, signed with an API
//! key's secret (the key is the JWT `kid`).

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
/// The claims, grants and development key pair, shared with every token minter.
pub use sfu_core::proto::token::{Claims, DEV_API_KEY, DEV_API_SECRET, Grants};

/// Why a request is not authorized. `401` variants are about the token itself, `403` about
/// what it allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    Missing,
    #[error("token is expired")]
    Expired,
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("token is for room {token_room:?}, not {room:?}")]
    WrongRoom { token_room: String, room: String },
    #[error("token lacks the {0} grant")]
    MissingGrant(&'static str),
    #[error(
        "this session belongs to another identity: only the identity that created it, or a \
         token with the admin grant for room {room:?}, may end or change it"
    )]
    NotOwner { room: String },
}

impl AuthError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Expired | AuthError::Invalid(_) => 401,
            AuthError::WrongRoom { .. }
            | AuthError::MissingGrant(_)
            | AuthError::NotOwner { .. } => 403,
        }
    }
}

/// Verifies tokens against the configured key pairs.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    secrets: BTreeMap<String, String>,
    leeway_secs: u64,
}

impl Verifier {
    pub fn new(keys: &BTreeMap<String, String>, trust_dev_key: bool, leeway_secs: u64) -> Self {
        let mut secrets = keys.clone();
        if trust_dev_key {
            secrets.insert(DEV_API_KEY.to_string(), DEV_API_SECRET.to_string());
        }
        Self {
            secrets,
            leeway_secs,
        }
    }

    /// Check the `Authorization` header value and return the claims.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Claims, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::Invalid("algorithm must be HS256".into()));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("no `kid` (API key) in the header".into()))?;
        let secret = self
            .secrets
            .get(&kid)
            .ok_or_else(|| AuthError::Invalid(format!("unknown API key {kid:?}")))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = self.leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        if data.claims.iss != kid {
            return Err(AuthError::Invalid(
                "`iss` does not match the API key".into(),
            ));
        }
        Ok(data.claims)
    }
}

/// Check that `claims` allow `grant` in `room`.
pub fn authorize(claims: &Claims, room: &str, grant: Grant) -> Result<(), AuthError> {
    // A token acts in its own room; only an admin token for every room acts in any room.
    if claims.room != room && !is_cluster_admin(claims) {
        return Err(AuthError::WrongRoom {
            token_room: claims.room.clone(),
            room: room.to_string(),
        });
    }
    let ok = match grant {
        Grant::Publish => claims.grants.publish,
        Grant::Subscribe => claims.grants.subscribe,
        Grant::Any => true,
    };
    if ok || claims.grants.admin {
        Ok(())
    } else {
        Err(AuthError::MissingGrant(grant.as_str()))
    }
}

/// Check that `claims` may act on a session in `room` created by `owner` (its token `sub`):
/// the same identity, or a token for that room with the admin grant. Call after [`authorize`].
pub fn authorize_owner(claims: &Claims, room: &str, owner: &str) -> Result<(), AuthError> {
    if claims.sub == owner
        || (claims.grants.admin && claims.room == room)
        || is_cluster_admin(claims)
    {
        Ok(())
    } else {
        Err(AuthError::NotOwner {
            room: room.to_string(),
        })
    }
}

/// The room name an admin token carries to act in every room and on the cluster
/// (`control token --admin` without `--room`).
pub const EVERY_ROOM: &str = "*";

/// Whether `claims` is an admin token for every room (the admin API needs one).
pub fn is_cluster_admin(claims: &Claims) -> bool {
    claims.grants.admin && claims.room == EVERY_ROOM
}

/// A grant a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Publish,
    Subscribe,
    /// Any valid token for the room (e.g. to end one's own session).
    Any,
}

impl Grant {
    fn as_str(self) -> &'static str {
        match self {
            Grant::Publish => "publish",
            Grant::Subscribe => "subscribe",
            Grant::Any => "any",
        }
    }
}

/// Mint a token. `now` is seconds since the Unix epoch.
pub fn mint(
    api_key: &str,
    secret: &str,
    room: &str,
    identity: &str,
    grants: Grants,
    now: u64,
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let header = Header {
        kid: Some(api_key.to_string()),
        ..Header::new(Algorithm::HS256)
    };
    let claims = Claims::new(api_key, room, identity, grants, now, ttl_secs);
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the Unix epoch (I/O shell only).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        Verifier::new(&BTreeMap::new(), true, 0)
    }

    fn grants(publish: bool, subscribe: bool) -> Grants {
        Grants {
            publish,
            subscribe,
            admin: false,
            moderator: false,
        }
    }

    #[test]
    fn a_room_admin_acts_only_in_its_room_and_an_every_room_admin_everywhere() {
        let now = unix_now();
        let admin = Grants {
            admin: true,
            ..grants(false, false)
        };
        let claims = |room: &str| {
            let t = mint(DEV_API_KEY, DEV_API_SECRET, room, "root", admin, now, 60).expect("mint");
            verifier()
                .verify_header(Some(&format!("Bearer {t}")))
                .expect("valid")
        };
        let room_admin = claims("r1");
        assert!(authorize(&room_admin, "r1", Grant::Publish).is_ok());
        assert!(authorize(&room_admin, "r2", Grant::Publish).is_err());
        assert!(authorize_owner(&room_admin, "r2", "alice").is_err());
        assert!(!is_cluster_admin(&room_admin));
        let everywhere = claims(EVERY_ROOM);
        assert!(authorize(&everywhere, "r2", Grant::Subscribe).is_ok());
        assert!(authorize_owner(&everywhere, "r2", "alice").is_ok());
        assert!(is_cluster_admin(&everywhere));
    }

    #[test]
    fn round_trip_and_grants() {
        let now = unix_now();
        let t = mint(
            DEV_API_KEY,
            DEV_API_SECRET,
            "r1",
            "alice",
            grants(true, false),
            now,
            60,
        )
        .expect("mint");
        let c = verifier()
            .verify_header(Some(&format!("Bearer {t}")))
            .expect("valid");
        assert_eq!(c.sub, "alice");
        assert!(authorize(&c, "r1", Grant::Publish).is_ok());
        assert_eq!(
            authorize(&c, "r1", Grant::Subscribe),
            Err(AuthError::MissingGrant("subscribe"))
        );
        assert_eq!(
            authorize(&c, "r2", Grant::Publish).map_err(|e| e.status()),
            Err(403)
        );
    }

    fn claims(room: &str, sub: &str, admin: bool) -> Claims {
        Claims {
            iss: DEV_API_KEY.into(),
            sub: sub.into(),
            room: room.into(),
            iat: 0,
            exp: 0,
            grants: Grants {
                publish: true,
                subscribe: true,
                admin,
                moderator: false,
            },
        }
    }

    /// Only the creator, or an admin of the session's room, may act on a session.
    #[test]
    fn sessions_belong_to_their_creator_and_the_room_admin() {
        assert!(authorize_owner(&claims("r", "alice", false), "r", "alice").is_ok());
        assert!(authorize_owner(&claims("r", "admin", true), "r", "alice").is_ok());
        let bob = authorize_owner(&claims("r", "bob", false), "r", "alice");
        assert_eq!(bob.clone().map_err(|e| e.status()), Err(403));
        let message = bob.expect_err("bob is not alice").to_string();
        assert!(
            message.contains("another identity") && !message.contains("alice"),
            "{message}"
        );
        // An admin of another room is not an admin of this one.
        assert_eq!(
            authorize_owner(&claims("elsewhere", "admin", true), "r", "alice")
                .map_err(|e| e.status()),
            Err(403)
        );
    }

    #[test]
    fn rejects_expired_forged_and_missing() {
        let v = verifier();
        assert_eq!(v.verify_header(None), Err(AuthError::Missing));
        assert_eq!(v.verify_header(Some("Basic abc")), Err(AuthError::Missing));
        let old = mint(
            DEV_API_KEY,
            DEV_API_SECRET,
            "r",
            "a",
            grants(true, true),
            1000,
            10,
        )
        .expect("mint");
        assert_eq!(v.verify(&old), Err(AuthError::Expired));
        let forged = mint(
            DEV_API_KEY,
            "not-the-secret",
            "r",
            "a",
            grants(true, true),
            unix_now(),
            60,
        )
        .expect("mint");
        assert_eq!(v.verify(&forged).map_err(|e| e.status()), Err(401));
        let unknown = mint(
            "other",
            "secret-secret-secret",
            "r",
            "a",
            grants(true, true),
            unix_now(),
            60,
        )
        .expect("mint");
        assert_eq!(v.verify(&unknown).map_err(|e| e.status()), Err(401));
        assert_eq!(v.verify("garbage").map_err(|e| e.status()), Err(401));
        // Without the dev flag, the dev key is not trusted.
        let dev = mint(
            DEV_API_KEY,
            DEV_API_SECRET,
            "r",
            "a",
            grants(true, true),
            unix_now(),
            60,
        )
        .expect("mint");
        assert!(
            Verifier::new(&BTreeMap::new(), false, 0)
                .verify(&dev)
                .is_err()
        );
    }
}
