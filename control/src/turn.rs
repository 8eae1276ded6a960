//! TURN credentials for clients behind NATs and firewalls that block UDP to the media node:
//! time-limited username/password pairs in coturn's `use-auth-secret` scheme (the "TURN REST
//! API"), which the TURN server checks with the same shared secret and no call to control.
//!
//! username = `"{expiry}:{identity}"` (expiry in seconds since the Unix epoch), password =
//! base64(HMAC-SHA1(secret, username)). They reach clients as RFC 9725 `Link` headers on WHIP
//! and WHEP answers, and as JSON from `GET /api/turn`.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::config::ConfigError;

/// `[turn]`: the TURN servers handed to clients. Both `secret` and `urls`, or neither.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// The TURN server's `static-auth-secret`; empty = no TURN.
    pub secret: String,
    /// TURN (and STUN) server URIs as clients use them, e.g.
    /// `turn:turn.example.com:3478?transport=udp`, `turns:turn.example.com:5349?transport=tcp`.
    pub urls: Vec<String>,
    /// How long a credential is valid, in seconds.
    pub ttl_secs: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            secret: String::new(),
            urls: Vec::new(),
            // A day: longer than any session, so a credential never runs out under a call;
            // short enough that a leaked one is soon useless.
            ttl_secs: 86_400,
        }
    }
}

/// The secret stays out of logs.
impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("secret", &if self.secret.is_empty() { "" } else { "<set>" })
            .field("urls", &self.urls)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl TurnConfig {
    /// Check the section; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.into(),
            reason,
        };
        match (self.secret.is_empty(), self.urls.is_empty()) {
            (true, true) => return Ok(()),
            (false, true) => {
                return Err(invalid(
                    "turn.urls",
                    "list the TURN servers to hand out (or remove turn.secret)".into(),
                ));
            }
            (true, false) => {
                return Err(invalid(
                    "turn.secret",
                    "set the TURN server's static-auth-secret to sign credentials with \
                     (or remove turn.urls)"
                        .into(),
                ));
            }
            (false, false) => {}
        }
        if self.secret.len() < 16 {
            return Err(invalid(
                "turn.secret",
                "must be at least 16 characters".into(),
            ));
        }
        for url in &self.urls {
            check_url(url).map_err(|reason| invalid("turn.urls", format!("{url:?}: {reason}")))?;
        }
        if self.ttl_secs == 0 {
            return Err(invalid("turn.ttl_secs", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Whether `url` is a STUN/TURN URI (RFC 7064, RFC 7065) that can go into a `Link` header
/// unescaped.
fn check_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    let rest = url.split_once(':').map_or("", |(_, r)| r);
    if !matches!(scheme.as_deref(), Some("stun" | "stuns" | "turn" | "turns")) || rest.is_empty() {
        return Err("must be a stun:, stuns:, turn: or turns: URI, e.g. \
                    turn:turn.example.com:3478?transport=udp"
            .into());
    }
    if let Some(c) = url
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '<' | '>' | '"' | '\\' | ','))
    {
        return Err(format!("must not contain {c:?}"));
    }
    Ok(())
}

/// Credentials for one client, valid for `ttl` seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnCredentials {
    /// Every configured server URI.
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
    /// Seconds from now until the credential expires.
    pub ttl: u64,
}

impl TurnCredentials {
    /// One `Link` header value per server (RFC 9725, "STUN/TURN Server Configuration"):
    /// `<turn:…>; rel="ice-server"; username="…"; credential="…"; credential-type="password"`.
    /// STUN servers need no credentials and get none.
    pub fn link_headers(&self) -> Vec<String> {
        self.urls
            .iter()
            .map(|url| {
                if is_stun(url) {
                    format!("<{url}>; rel=\"ice-server\"")
                } else {
                    format!(
                        "<{url}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; \
                         credential-type=\"password\"",
                        self.username, self.credential
                    )
                }
            })
            .collect()
    }
}

fn is_stun(url: &str) -> bool {
    url.split_once(':')
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("stun") || s.eq_ignore_ascii_case("stuns"))
}

/// Mints credentials from a valid [`TurnConfig`].
#[derive(Clone)]
pub struct TurnIssuer {
    secret: String,
    urls: Vec<String>,
    ttl_secs: u64,
}

/// The secret stays out of logs.
impl fmt::Debug for TurnIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnIssuer")
            .field("urls", &self.urls)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl TurnIssuer {
    /// `None` when TURN is not configured (no secret or no URLs).
    pub fn new(config: &TurnConfig) -> Option<Self> {
        (!config.secret.is_empty() && !config.urls.is_empty()).then(|| Self {
            secret: config.secret.clone(),
            urls: config.urls.clone(),
            ttl_secs: config.ttl_secs,
        })
    }

    /// Credentials for `identity` (a token's `sub`), valid from `now` (seconds since the Unix
    /// epoch) for `ttl_secs`.
    pub fn issue(&self, identity: &str, now: u64) -> TurnCredentials {
        let username = username(now.saturating_add(self.ttl_secs), identity);
        TurnCredentials {
            urls: self.urls.clone(),
            credential: credential(&self.secret, &username),
            username,
            ttl: self.ttl_secs,
        }
    }
}

/// `"{expiry}:{identity}"`. The identity is percent-encoded outside `A-Z a-z 0-9 - . _ ~ @`,
/// so that whatever a token's `sub` holds, the username is one header-safe token with the
/// expiry as its only colon-separated prefix (coturn reads the expiry up to the first `:`).
pub fn username(expiry: u64, identity: &str) -> String {
    let mut name = format!("{expiry}:");
    for b in identity.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name
}

/// base64(HMAC-SHA1(secret, username)): the password coturn's `use-auth-secret` expects.
pub fn credential(secret: &str, username: &str) -> String {
    // HMAC takes keys of any length (longer ones are hashed first), so this cannot fail.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str, urls: &[&str]) -> TurnConfig {
        TurnConfig {
            secret: secret.into(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            ..TurnConfig::default()
        }
    }

    /// Expected value computed independently, with both
    /// `printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac north-wind-turn-secret -binary | base64`
    /// and Python's `base64.b64encode(hmac.new(secret, username, hashlib.sha1).digest())`.
    #[test]
    fn credential_matches_an_independent_computation() {
        assert_eq!(
            credential("north-wind-turn-secret", "1700000000:alice"),
            "ejrnBELadoQ6f5+B6Cv64E/BhmI="
        );
    }

    #[test]
    fn issue_signs_expiry_and_identity() {
        let issuer = TurnIssuer::new(&TurnConfig {
            ttl_secs: 600,
            ..config(
                "north-wind-turn-secret",
                &["turn:turn.example.com:3478?transport=udp"],
            )
        })
        .expect("configured");
        let c = issuer.issue("alice", 1_699_999_400);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.credential, "ejrnBELadoQ6f5+B6Cv64E/BhmI=");
        assert_eq!(c.ttl, 600);
        assert_eq!(
            c.link_headers(),
            [
                "<turn:turn.example.com:3478?transport=udp>; rel=\"ice-server\"; \
              username=\"1700000000:alice\"; credential=\"ejrnBELadoQ6f5+B6Cv64E/BhmI=\"; \
              credential-type=\"password\""
            ]
        );
        assert_eq!(
            issuer.issue("alice", u64::MAX).username,
            format!("{}:alice", u64::MAX)
        );
    }

    #[test]
    fn stun_links_carry_no_credentials() {
        let issuer = TurnIssuer::new(&config(
            "north-wind-turn-secret",
            &[
                "stun:stun.example.com:3478",
                "turns:turn.example.com:5349?transport=tcp",
            ],
        ))
        .expect("configured");
        let links = issuer.issue("bob", 0).link_headers();
        assert_eq!(links[0], "<stun:stun.example.com:3478>; rel=\"ice-server\"");
        assert!(links[1].starts_with("<turns:turn.example.com:5349?transport=tcp>; rel=\"ice-server\"; username=\"86400:bob\""));
    }

    /// Whatever the identity holds, the username is a safe quoted-string with one leading
    /// expiry.
    #[test]
    fn identities_are_escaped() {
        assert_eq!(
            username(5, "a:b \"c\"\\ é@x.y"),
            "5:a%3Ab%20%22c%22%5C%20%C3%A9@x.y"
        );
        let links = TurnIssuer::new(&config("0123456789abcdef", &["turn:t"]))
            .expect("configured")
            .issue("evil\"\r\nX-Injected: 1", 0)
            .link_headers();
        for link in links {
            assert!(axum::http::HeaderValue::from_str(&link).is_ok(), "{link}");
            assert!(!link.contains("\r") && !link.contains("\"\r"), "{link}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        assert!(TurnConfig::default().validate().is_ok(), "off by default");
        assert!(TurnIssuer::new(&TurnConfig::default()).is_none());
        let ok = config(
            "0123456789abcdef",
            &["turn:turn.example.com:3478?transport=udp"],
        );
        assert!(ok.validate().is_ok());
        let cases = [
            (config("0123456789abcdef", &[]), "turn.urls"),
            (config("", &["turn:t"]), "turn.secret"),
            (config("short", &["turn:t"]), "turn.secret"),
            (config("0123456789abcdef", &["http://t"]), "turn.urls"),
            (config("0123456789abcdef", &["turn:"]), "turn.urls"),
            (config("0123456789abcdef", &["turn:t x"]), "turn.urls"),
            (config("0123456789abcdef", &["turn:t>; rel=x"]), "turn.urls"),
            (
                TurnConfig {
                    ttl_secs: 0,
                    ..ok.clone()
                },
                "turn.ttl_secs",
            ),
        ];
        for (c, key) in cases {
            let e = c.validate().expect_err("invalid");
            assert!(e.to_string().contains(key), "{c:?}: {e}");
        }
        assert!(
            !format!("{ok:?}").contains("0123456789abcdef"),
            "secret in Debug"
        );
        let issuer = TurnIssuer::new(&ok).expect("configured");
        assert!(
            !format!("{issuer:?}").contains("0123456789abcdef"),
            "secret in Debug"
        );
    }

    /// `[turn]` through the configuration loader: environment overrides, typed values, and
    /// errors naming the key.
    #[test]
    fn the_turn_section_loads_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
                .into_iter()
        };
        let c = crate::config::Config::load(
            None,
            env(&[
                ("SFU__TURN__SECRET", "1234567890123456"),
                (
                    "SFU__TURN__URLS",
                    r#"["turn:turn.example.com:3478?transport=udp"]"#,
                ),
                ("SFU__TURN__TTL_SECS", "600"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.turn.secret, "1234567890123456", "digits taken as text");
        assert_eq!(c.turn.urls, ["turn:turn.example.com:3478?transport=udp"]);
        assert_eq!(c.turn.ttl_secs, 600);
        let defaults = crate::config::Config::load(None, std::iter::empty()).expect("valid");
        assert_eq!(defaults.turn, TurnConfig::default());
        assert_eq!(defaults.turn.ttl_secs, 86_400);

        let e =
            crate::config::Config::load(None, env(&[("SFU__TURN__SECRET", "1234567890123456")]))
                .expect_err("urls missing");
        assert!(e.to_string().contains("turn.urls"), "{e}");
    }
}
