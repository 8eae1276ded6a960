//! How a synthetic peer gets its session negotiated with the server under test. The engine owns
//! the `Rtc`; a [`Protocol`] drives the signaling exchange through the [`SdpClient`] the engine
//! hands it, so servers where the client offers (WHIP, WHEP) and servers that offer to
//! subscribers (Janus VideoRoom) fit the same engine.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::token::{self, Grants};
use crate::whip::{Endpoint, SignalError, SignalingClient};

/// The `Rtc` side of a negotiation, implemented by the engine for each peer.
pub trait SdpClient {
    /// The client's offer for the media the peer was planned with.
    fn create_offer(&mut self) -> Result<String, PeerFailure>;
    /// Applies the server's answer to [`create_offer`](Self::create_offer)'s offer.
    fn accept_answer(&mut self, answer: &str) -> Result<(), PeerFailure>;
    /// Answers an offer the server made (servers that offer to subscribers).
    fn answer_offer(&mut self, offer: &str) -> Result<String, PeerFailure>;
}

/// What a protocol needs later to end a session, and where the server placed it. `id` is
/// protocol specific (the WHIP/WHEP `Location`, a Janus session/handle pair, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHandle {
    pub id: String,
    pub token: Option<String>,
    /// The media node serving the session, when the server names it (WHIP/WHEP against our
    /// control: `X-Sfu-Node`); `None` otherwise.
    pub node: Option<String>,
}

/// A signaling dialect spoken to the server under test. Called from signaling threads, never
/// from the media threads; every call is bounded in time.
pub trait Protocol: Send + Sync + fmt::Debug {
    /// Short name for reports (`whip`, `janus`).
    fn name(&self) -> &'static str;
    /// Publishes into `room` as `identity`.
    fn publish(
        &self,
        room: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure>;
    /// Subscribes to `room`'s publishers as `identity`.
    fn subscribe(
        &self,
        room: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure>;
    /// Ends a session (best effort; the server also reaps sessions whose peer went away).
    fn leave(&self, session: &SessionHandle) -> Result<(), PeerFailure>;
}

/// Why a peer did not get (or keep) working media. [`reason`](Self::reason) is the key the
/// report counts failures under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFailure {
    #[error("server unreachable: {0}")]
    Unreachable(String),
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("signaling: {0}")]
    Signaling(String),
    #[error("ICE did not connect within {0:?}")]
    IceTimeout(Duration),
    #[error("DTLS/SRTP did not come up within {0:?} of ICE")]
    DtlsTimeout(Duration),
    #[error("disconnected: {0}")]
    Disconnected(String),
    #[error("socket: {0}")]
    Socket(String),
    #[error("token: {0}")]
    Token(String),
}

impl PeerFailure {
    /// Stable key for counting this failure: `unreachable`, `http_403`, `bad_sdp`, ...
    pub fn reason(&self) -> String {
        match self {
            PeerFailure::Unreachable(_) => "unreachable".into(),
            PeerFailure::Status { status, .. } => format!("http_{status}"),
            PeerFailure::BadSdp(_) => "bad_sdp".into(),
            PeerFailure::Signaling(_) => "signaling".into(),
            PeerFailure::IceTimeout(_) => "ice_timeout".into(),
            PeerFailure::DtlsTimeout(_) => "dtls_timeout".into(),
            PeerFailure::Disconnected(_) => "disconnected".into(),
            PeerFailure::Socket(_) => "socket".into(),
            PeerFailure::Token(_) => "token".into(),
        }
    }
}

impl From<SignalError> for PeerFailure {
    fn from(e: SignalError) -> Self {
        match e {
            SignalError::Status { status, body, .. } => PeerFailure::Status { status, body },
            SignalError::Http { .. } => PeerFailure::Unreachable(e.to_string()),
            SignalError::MissingLocation { .. } => PeerFailure::Signaling(e.to_string()),
        }
    }
}

/// Where bearer tokens come from.
#[derive(Clone)]
pub enum TokenSource {
    /// The same token for every peer (`--token`).
    Fixed(String),
    /// A token minted per peer for its room and identity (`--api-key`/`--api-secret`).
    Mint {
        api_key: String,
        api_secret: String,
        ttl: Duration,
    },
}

impl fmt::Debug for TokenSource {
    // Never prints secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Fixed(_) => f.write_str("TokenSource::Fixed(..)"),
            TokenSource::Mint { api_key, ttl, .. } => f
                .debug_struct("TokenSource::Mint")
                .field("api_key", api_key)
                .field("ttl", ttl)
                .finish_non_exhaustive(),
        }
    }
}

impl TokenSource {
    /// The dev key pair `control dev` accepts.
    pub fn dev() -> Self {
        TokenSource::Mint {
            api_key: token::DEV_API_KEY.into(),
            api_secret: token::DEV_API_SECRET.into(),
            ttl: Duration::from_secs(24 * 3600),
        }
    }

    pub fn token(&self, room: &str, identity: &str, grants: Grants) -> Result<String, PeerFailure> {
        match self {
            TokenSource::Fixed(t) => Ok(t.clone()),
            TokenSource::Mint {
                api_key,
                api_secret,
                ttl,
            } => {
                let claims =
                    token::claims_at(api_key, room, identity, grants, SystemTime::now(), *ttl);
                token::mint(&claims, api_key, api_secret)
                    .map_err(|e| PeerFailure::Token(e.to_string()))
            }
        }
    }
}

/// WHIP to publish, WHEP to subscribe: the client offers, the server answers.
#[derive(Debug)]
pub struct WhipWhep {
    http: SignalingClient,
    tokens: TokenSource,
    /// `?region=` on WHIP and on WHEP offers.
    regions: (Option<String>, Option<String>),
    /// `?participant=` on WHEP offers: whom to watch.
    watch: Option<String>,
}

impl WhipWhep {
    pub fn new(base_url: &str, tokens: TokenSource) -> Self {
        WhipWhep {
            http: SignalingClient::new(base_url),
            tokens,
            regions: (None, None),
            watch: None,
        }
    }

    /// Watch `identity` with WHEP (`?participant=`) rather than the newest other publisher.
    pub fn watching(self, identity: Option<String>) -> Self {
        WhipWhep {
            watch: identity,
            ..self
        }
    }

    /// Ask for `publish` on WHIP offers and `subscribe` on WHEP offers (`?region=NAME`).
    pub fn in_regions(self, publish: Option<String>, subscribe: Option<String>) -> Self {
        WhipWhep {
            regions: (publish, subscribe),
            ..self
        }
    }

    fn negotiate(
        &self,
        endpoint: Endpoint,
        room: &str,
        identity: &str,
        grants: Grants,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        let token = self.tokens.token(room, identity, grants)?;
        let offer = client.create_offer()?;
        let region = match endpoint {
            Endpoint::Whip => &self.regions.0,
            Endpoint::Whep => &self.regions.1,
        };
        let mut query = Vec::new();
        if let Some(region) = region {
            query.push(format!("region={}", percent_encode(region)));
        }
        if let (Endpoint::Whep, Some(who)) = (endpoint, &self.watch) {
            query.push(format!("participant={}", percent_encode(who)));
        }
        let target = match query.is_empty() {
            true => room.to_string(),
            false => format!("{room}?{}", query.join("&")),
        };
        let session = self.http.offer(endpoint, &target, &token, &offer)?;
        if let Err(e) = client.accept_answer(&session.answer) {
            // The server holds a session we cannot use; free it now rather than at its timeout.
            let _ = self.http.delete(&session.location, &token);
            return Err(e);
        }
        Ok(SessionHandle {
            id: session.location,
            token: Some(token),
            node: session.node,
        })
    }
}

impl Protocol for WhipWhep {
    fn name(&self) -> &'static str {
        "whip"
    }

    fn publish(
        &self,
        room: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        self.negotiate(Endpoint::Whip, room, identity, Grants::PUBLISH, client)
    }

    fn subscribe(
        &self,
        room: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        self.negotiate(Endpoint::Whep, room, identity, Grants::SUBSCRIBE, client)
    }

    fn leave(&self, session: &SessionHandle) -> Result<(), PeerFailure> {
        let token = session.token.as_deref().unwrap_or_default();
        self.http.delete(&session.id, token).map_err(Into::into)
    }
}

/// `value` for a URL query: unreserved characters as they are, every other byte `%XX`.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
