//! Janus VideoRoom (`janus.plugin.videoroom`) over Janus's HTTP JSON API, so the load scenarios
//! can run against Janus side by side with our SFU. Each synthetic peer gets its own Janus
//! session with one VideoRoom handle, as a browser would; one background thread per
//! [`JanusVideoRoom`] keeps all live sessions from expiring.
//!
//! Publishers `join` as `publisher`, then `publish` with the client's offer and apply Janus's
//! answer. Subscribers `join` as `subscriber` to one feed and answer Janus's offer with `start`:
//! like a WHEP session on our SFU, the newest publisher whose identity is not their own (newest
//! in the order this generator published them). Rooms are created on first use, with a numeric
//! id derived from the room name ([`room_id`]). See `docs/janus.md`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::protocol::{PeerFailure, Protocol, SdpClient, SessionHandle};
use crate::peer::lock;
use crate::whip::HTTP_TIMEOUT;

/// Default bound on one whole publish or subscribe negotiation, including a subscriber's wait
/// for the room's first publisher.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(20);

/// How often live sessions are refreshed. Janus expires a session after `session_timeout`
/// (60 s by default) without a request.
const KEEPALIVE_PERIOD: Duration = Duration::from_secs(20);

/// Bound on one keepalive request, so stopping the keepalive thread stays prompt.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Janus answers a long poll after at most 30 s (with `{"janus":"keepalive"}`), so a poll that
/// takes longer than this means the server is stuck.
const LONG_POLL_LIMIT: Duration = Duration::from_secs(35);

/// Events fetched per long poll.
const EVENTS_PER_POLL: u32 = 16;

/// How often a subscriber looks again for publishers while the room has none.
const PUBLISHER_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Largest response accepted: a subscriber's offer grows with the room's publishers.
const MAX_BODY: u64 = 4 << 20;

/// `publishers` limit of the rooms we create: no scenario should hit it.
const ROOM_PUBLISHERS: u32 = 4096;

const PLUGIN: &str = "janus.plugin.videoroom";

/// Janus core error: the session does not exist (expired or destroyed).
const JANUS_ERROR_SESSION_NOT_FOUND: u32 = 458;
/// VideoRoom error: no such room.
const VIDEOROOM_ERROR_NO_SUCH_ROOM: u32 = 426;
/// VideoRoom error: the room already exists (someone else created it first).
const VIDEOROOM_ERROR_ROOM_EXISTS: u32 = 427;
/// VideoRoom error: no such feed (the publisher left between listing and joining).
const VIDEOROOM_ERROR_NO_SUCH_FEED: u32 = 428;

/// The numeric Janus room id for a room name: the 64-bit FNV-1a hash of its UTF-8 bytes,
/// reduced to 53 bits (exact in JavaScript clients too) and never 0 (Janus reads 0 as "pick an
/// id for me"). Deterministic across runs, processes and platforms.
pub fn room_id(name: &str) -> u64 {
    (sfu_proto::ids::fnv1a(name.as_bytes()) & ((1 << 53) - 1)).max(1)
}

/// Ids Janus hands out (random 53-bit numbers) and the room ids we choose, kept apart by type.
macro_rules! janus_id {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        struct $name(u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

janus_id! {
    /// A Janus session (one per synthetic peer).
    SessionId;
    /// A plugin handle within a session.
    HandleId;
    /// A VideoRoom room ([`room_id`] of its name).
    RoomId;
    /// A VideoRoom participant that publishes: what subscribers subscribe to.
    FeedId;
}

impl RoomId {
    fn of(name: &str) -> RoomId {
        RoomId(room_id(name))
    }
}

/// Janus VideoRoom as the server under test.
///
/// `publish` and `subscribe` may be called from many threads at once; each call is bounded by
/// the negotiation timeout plus one HTTP timeout. Dropping it stops the keepalive thread
/// (promptly) but does not end sessions: call [`Protocol::leave`] for each, or Janus reaps
/// them after its session timeout.
pub struct JanusVideoRoom {
    api: Api,
    negotiation_timeout: Duration,
    /// Rooms known to exist, so only a room's first peer pays for `create`.
    rooms: Mutex<HashSet<RoomId>>,
    /// The order our publishers started in, to pick the newest feed for a subscriber.
    feeds: Mutex<FeedOrder>,
    live: Arc<LiveSessions>,
    keepalive: Option<Keepalive>,
}

impl fmt::Debug for JanusVideoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JanusVideoRoom")
            .field("base", &self.api.base)
            .field("negotiation_timeout", &self.negotiation_timeout)
            .field("live_sessions", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl JanusVideoRoom {
    /// `base_url` is Janus's HTTP API root, e.g. `http://10.77.0.1:8088/janus`. Starts the
    /// keepalive thread; no request is made until the first peer.
    pub fn new(base_url: &str) -> JanusVideoRoom {
        let api = Api::new(base_url);
        let live = Arc::new(LiveSessions::default());
        let keepalive = match Keepalive::spawn(api.clone(), live.clone()) {
            Ok(k) => Some(k),
            Err(e) => {
                // Peers still work; their sessions expire after Janus's session timeout.
                tracing::warn!("janus: no keepalive thread ({e}); sessions will expire");
                None
            }
        };
        JanusVideoRoom {
            api,
            negotiation_timeout: NEGOTIATION_TIMEOUT,
            rooms: Mutex::new(HashSet::new()),
            feeds: Mutex::new(FeedOrder::default()),
            live,
            keepalive,
        }
    }

    /// Bounds each publish or subscribe negotiation (default [`NEGOTIATION_TIMEOUT`]).
    pub fn negotiation_timeout(mut self, timeout: Duration) -> JanusVideoRoom {
        self.negotiation_timeout = timeout;
        self
    }

    /// Sessions created and not yet left (or found expired by the keepalive thread).
    pub fn live_sessions(&self) -> usize {
        self.live.len()
    }

    /// Creates a session with one VideoRoom handle, registered for keepalives.
    fn open(&self) -> Result<PeerSession<'_>, Failure> {
        let deadline = Instant::now() + self.negotiation_timeout;
        let session = match self.api.post("", "create", json!({}))? {
            Reply::Created(id) => SessionId(id),
            other => return Err(other.unexpected("create")),
        };
        self.live.insert(session);
        let mut peer = PeerSession {
            room: self,
            session,
            handle: HandleId(0),
            deadline,
            armed: true,
        };
        match self
            .api
            .post(&session.to_string(), "attach", json!({ "plugin": PLUGIN }))?
        {
            Reply::Created(id) => peer.handle = HandleId(id),
            other => return Err(other.unexpected("attach")),
        }
        Ok(peer)
    }

    /// Creates `room` unless it is known to exist.
    fn ensure_room(&self, peer: &PeerSession<'_>, name: &str, room: RoomId) -> Result<(), Failure> {
        if lock(&self.rooms).contains(&room) {
            return Ok(());
        }
        let body = json!({
            "request": "create",
            "room": room,
            "description": description(name),
            "permanent": false,
            "is_private": false,
            "publishers": ROOM_PUBLISHERS,
            "audiocodec": "opus",
            "videocodec": "vp8,h264",
        });
        match peer.message("create room", body, None) {
            Ok(_) => {}
            // Another peer created it first.
            Err(Failure::VideoRoom { code, .. }) if code == VIDEOROOM_ERROR_ROOM_EXISTS => {}
            Err(e) => return Err(e),
        }
        lock(&self.rooms).insert(room);
        Ok(())
    }

    /// Runs `join`, creating the room again if Janus no longer knows it (restarted since we
    /// created it).
    fn join(
        &self,
        peer: &PeerSession<'_>,
        name: &str,
        room: RoomId,
        body: Value,
    ) -> Result<(VideoRoomData, Option<Jsep>), Failure> {
        self.ensure_room(peer, name, room)?;
        match peer.message("join", body.clone(), None) {
            Err(Failure::VideoRoom { code, .. }) if code == VIDEOROOM_ERROR_NO_SUCH_ROOM => {
                lock(&self.rooms).remove(&room);
                self.ensure_room(peer, name, room)?;
                peer.message("join", body, None)
            }
            other => other,
        }
    }

    fn publish_on(
        &self,
        peer: &PeerSession<'_>,
        name: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<(), PeerFailure> {
        let room = RoomId::of(name);
        let join = json!({
            "request": "join",
            "ptype": "publisher",
            "room": room,
            "display": identity,
        });
        let (joined, _) = self.join(peer, name, room, join)?;
        joined.require("joined")?;
        let feed = joined
            .id
            .ok_or_else(|| Failure::Unexpected("joined without a participant id".into()))?;

        let offer = client.create_offer()?;
        let (configured, jsep) = peer.message(
            "publish",
            json!({ "request": "publish" }),
            Some(Jsep::offer(offer)),
        )?;
        if configured.configured.as_deref() != Some("ok") {
            return Err(Failure::unexpected("publish", &configured).into());
        }
        let answer = jsep
            .filter(|j| j.kind == "answer")
            .ok_or_else(|| Failure::Unexpected("publish: event without a JSEP answer".into()))?;
        client.accept_answer(&answer.sdp)?;
        lock(&self.feeds).started(peer.session, feed);
        Ok(())
    }

    fn subscribe_on(
        &self,
        peer: &PeerSession<'_>,
        name: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<(), PeerFailure> {
        let room = RoomId::of(name);
        self.ensure_room(peer, name, room)?;
        let offer = loop {
            let Some(feed) = self.newest_feed(peer, name, room, identity)? else {
                if Instant::now() + PUBLISHER_POLL_INTERVAL >= peer.deadline {
                    return Err(Failure::NoPublishers {
                        room: name.to_string(),
                        waited: self.negotiation_timeout,
                    }
                    .into());
                }
                thread::sleep(PUBLISHER_POLL_INTERVAL);
                continue;
            };
            let join = json!({
                "request": "join",
                "ptype": "subscriber",
                "room": room,
                "streams": [{ "feed": feed }],
            });
            match self.join(peer, name, room, join) {
                Ok((attached, jsep)) => {
                    attached.require("attached")?;
                    break jsep.filter(|j| j.kind == "offer").ok_or_else(|| {
                        Failure::Unexpected("join: attached without a JSEP offer".into())
                    })?;
                }
                // A publisher left between listing and joining: list again.
                Err(Failure::VideoRoom { code, .. })
                    if code == VIDEOROOM_ERROR_NO_SUCH_FEED && Instant::now() < peer.deadline => {}
                Err(e) => return Err(e.into()),
            }
        };

        let answer = client.answer_offer(&offer.sdp)?;
        let (started, _) = peer.message(
            "start",
            json!({ "request": "start" }),
            Some(Jsep::answer(answer)),
        )?;
        if started.started.as_deref() != Some("ok") {
            return Err(Failure::unexpected("start", &started).into());
        }
        Ok(())
    }

    /// The feed a subscriber follows: the room's newest active publisher not named `identity`.
    fn newest_feed(
        &self,
        peer: &PeerSession<'_>,
        name: &str,
        room: RoomId,
        identity: &str,
    ) -> Result<Option<FeedId>, Failure> {
        let body = json!({ "request": "listparticipants", "room": room });
        let (list, _) = match peer.message("listparticipants", body.clone(), None) {
            Err(Failure::VideoRoom { code, .. }) if code == VIDEOROOM_ERROR_NO_SUCH_ROOM => {
                lock(&self.rooms).remove(&room);
                self.ensure_room(peer, name, room)?;
                peer.message("listparticipants", body, None)?
            }
            other => other?,
        };
        list.require("participants")?;
        let participants = list.participants.unwrap_or_default();
        Ok(lock(&self.feeds).newest(&participants, identity))
    }
}

impl Protocol for JanusVideoRoom {
    fn name(&self) -> &'static str {
        "janus"
    }

    fn publish(
        &self,
        room: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        let peer = self.open()?;
        self.publish_on(&peer, room, identity, client)?;
        Ok(peer.keep())
    }

    fn subscribe(
        &self,
        room: &str,
        identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        let peer = self.open()?;
        self.subscribe_on(&peer, room, identity, client)?;
        Ok(peer.keep())
    }

    fn leave(&self, session: &SessionHandle) -> Result<(), PeerFailure> {
        let (id, _handle) = parse_handle(&session.id).ok_or_else(|| {
            PeerFailure::Signaling(format!("not a Janus session handle: {:?}", session.id))
        })?;
        self.live.remove(id);
        lock(&self.feeds).ended(id);
        // Destroying the session hangs up and detaches its handle, which leaves the room.
        match self.api.post(&id.to_string(), "destroy", json!({})) {
            Ok(_) => Ok(()),
            // Already gone (expired, or Janus restarted): nothing left to end.
            Err(Failure::Janus { code, .. }) if code == JANUS_ERROR_SESSION_NOT_FOUND => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for JanusVideoRoom {
    fn drop(&mut self) {
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.stop();
        }
    }
}

/// The order in which this generator's publishers started. Janus lists a room's participants
/// unordered, with random ids.
#[derive(Debug, Default)]
struct FeedOrder {
    /// Feed → start sequence number.
    sequence: HashMap<FeedId, u64>,
    /// Publisher session → its feed, to forget the feed when the session is left.
    by_session: HashMap<SessionId, FeedId>,
    next: u64,
}

impl FeedOrder {
    fn started(&mut self, session: SessionId, feed: FeedId) {
        self.sequence.insert(feed, self.next);
        self.by_session.insert(session, feed);
        self.next += 1;
    }

    fn ended(&mut self, session: SessionId) {
        if let Some(feed) = self.by_session.remove(&session) {
            self.sequence.remove(&feed);
        }
    }

    /// The newest publishing participant not named `identity`. Publishers this generator did
    /// not start count as older than all of ours (by id among themselves).
    fn newest(&self, participants: &[Participant], identity: &str) -> Option<FeedId> {
        participants
            .iter()
            .filter(|p| p.publisher && p.display.as_deref() != Some(identity))
            .max_by_key(|p| (self.sequence.get(&p.id), p.id))
            .map(|p| p.id)
    }
}

/// `SessionHandle::id` of a Janus peer: `{session}/{handle}`.
fn format_handle(session: SessionId, handle: HandleId) -> String {
    format!("{session}/{handle}")
}

fn parse_handle(id: &str) -> Option<(SessionId, HandleId)> {
    let (session, handle) = id.split_once('/')?;
    Some((
        SessionId(session.parse().ok()?),
        HandleId(handle.parse().ok()?),
    ))
}

/// The room's description in Janus (what its admin API lists), kept short.
fn description(name: &str) -> String {
    const MAX: usize = 64;
    let mut end = name.len().min(MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("sfu-load {}", &name[..end])
}

/// One peer's session and handle while it negotiates. Dropped without [`PeerSession::keep`], it
/// destroys the session (best effort), so a failed negotiation leaves nothing on the server.
struct PeerSession<'a> {
    room: &'a JanusVideoRoom,
    session: SessionId,
    handle: HandleId,
    deadline: Instant,
    armed: bool,
}

impl PeerSession<'_> {
    /// The negotiation succeeded: keep the session and hand out its id.
    fn keep(mut self) -> SessionHandle {
        self.armed = false;
        // Janus says nothing about nodes: one server.
        SessionHandle {
            id: format_handle(self.session, self.handle),
            token: None,
            node: None,
        }
    }

    /// Sends a VideoRoom request on the handle and returns the plugin's answer: the immediate
    /// `success` of synchronous requests, or the `event` that follows the `ack` of
    /// asynchronous ones (fetched by long polling the session until the deadline).
    fn message(
        &self,
        what: &'static str,
        body: Value,
        jsep: Option<Jsep>,
    ) -> Result<(VideoRoomData, Option<Jsep>), Failure> {
        let api = &self.room.api;
        let path = format!("{}/{}", self.session, self.handle);
        let mut fields = Map::new();
        fields.insert("body".into(), body);
        if let Some(jsep) = jsep {
            let mut j = Map::new();
            if let Some(order) = rid_order(&jsep.sdp) {
                j.insert("rid_order".into(), order.into());
            }
            j.insert("type".into(), jsep.kind.into());
            j.insert("sdp".into(), jsep.sdp.into());
            fields.insert("jsep".into(), Value::Object(j));
        }
        let transaction = api.transaction();
        match api.send(
            &path,
            "message",
            &transaction,
            Value::Object(fields),
            HTTP_TIMEOUT,
        )? {
            Reply::Plugin { data, jsep } => Ok((VideoRoomData::from_plugin(data)?, jsep)),
            Reply::Ack => self.wait_event(what, &transaction),
            other => Err(other.unexpected(what)),
        }
    }

    fn wait_event(
        &self,
        what: &'static str,
        transaction: &str,
    ) -> Result<(VideoRoomData, Option<Jsep>), Failure> {
        let api = &self.room.api;
        loop {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Failure::Timeout {
                    what,
                    timeout: self.room.negotiation_timeout,
                });
            }
            for message in api.poll(self.session, remaining.min(LONG_POLL_LIMIT))? {
                // Everything else on the session (webrtcup, media, other publishers joining)
                // is not what this negotiation waits for.
                if message.transaction.as_deref() != Some(transaction) {
                    continue;
                }
                match message.into_reply()? {
                    Reply::Plugin { data, jsep } => {
                        return Ok((VideoRoomData::from_plugin(data)?, jsep));
                    }
                    Reply::Ack => {}
                    other => return Err(other.unexpected(what)),
                }
            }
        }
    }
}

impl Drop for PeerSession<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.room.live.remove(self.session);
            let _ = self
                .room
                .api
                .post(&self.session.to_string(), "destroy", json!({}));
        }
    }
}

/// Why a Janus exchange failed, fine-grained enough to retry on the codes that allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Failure {
    /// A Janus core error (`{"janus":"error"}`), e.g. 458 no such session.
    #[error("janus error {code}: {reason}")]
    Janus { code: u32, reason: String },
    /// A VideoRoom plugin error (`error_code` in the plugin data), e.g. 426 no such room.
    #[error("videoroom error {code}: {reason}")]
    VideoRoom { code: u32, reason: String },
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    #[error("no answer to {what} within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("room {room:?} had no publisher to subscribe to within {waited:?}")]
    NoPublishers { room: String, waited: Duration },
    /// The HTTP exchange itself failed.
    #[error(transparent)]
    Http(PeerFailure),
}

impl Failure {
    fn unexpected(what: &str, data: &VideoRoomData) -> Failure {
        Failure::Unexpected(format!("{what}: {data:?}"))
    }
}

impl From<Failure> for PeerFailure {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Http(p) => p,
            other => PeerFailure::Signaling(other.to_string()),
        }
    }
}

/// What one Janus API message means to the request waiting for it. Errors (core or plugin)
/// are turned into [`Failure`]s by [`Message::into_reply`].
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// `success` with `data.id`: the created session or handle.
    Created(u64),
    /// `success` or `event` carrying the plugin's answer, with Janus's JSEP if any.
    Plugin { data: Value, jsep: Option<Jsep> },
    /// `success` with nothing else (`destroy`, `detach`).
    Done,
    /// `ack`: accepted; an asynchronous request's answer follows as an `event`.
    Ack,
    /// Any other message (a long poll's `keepalive`, `webrtcup`, `hangup`, ...).
    Other(String),
}

impl Reply {
    fn unexpected(&self, what: &str) -> Failure {
        Failure::Unexpected(format!("{what}: {self:?}"))
    }
}

/// One message of the Janus API as it arrives: only the envelope is typed, so an unusual
/// payload in a message nobody waits for cannot fail the others.
#[derive(Debug, Clone, Deserialize)]
struct Message {
    janus: String,
    #[serde(default)]
    transaction: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    plugindata: Option<Value>,
    #[serde(default)]
    jsep: Option<Value>,
}

impl Message {
    fn parse(body: &str) -> Result<Message, Failure> {
        serde_json::from_str(body)
            .map_err(|e| Failure::Unexpected(format!("not a Janus message ({e}): {}", clip(body))))
    }

    /// The messages of a long poll's answer: an array (with `maxev`) or a single message.
    /// Array members that are not Janus messages are skipped.
    fn parse_batch(body: &str) -> Result<Vec<Message>, Failure> {
        let value: Value = serde_json::from_str(body).map_err(|e| {
            Failure::Unexpected(format!(
                "long poll answer is not JSON ({e}): {}",
                clip(body)
            ))
        })?;
        match value {
            Value::Array(items) => Ok(items
                .into_iter()
                .filter_map(|item| match serde_json::from_value(item) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::debug!("janus: skipping malformed event: {e}");
                        None
                    }
                })
                .collect()),
            other => serde_json::from_value(other)
                .map(|m| vec![m])
                .map_err(|e| Failure::Unexpected(format!("not a Janus message ({e})"))),
        }
    }

    fn into_reply(self) -> Result<Reply, Failure> {
        match self.janus.as_str() {
            "error" => {
                let error = self.error.unwrap_or_default();
                Err(Failure::Janus {
                    code: error
                        .get("code")
                        .and_then(Value::as_u64)
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(0),
                    reason: error
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("(no reason)")
                        .to_string(),
                })
            }
            "ack" => Ok(Reply::Ack),
            "success" | "event" => {
                let jsep = match self.jsep {
                    Some(j) => Some(serde_json::from_value::<Jsep>(j).map_err(|e| {
                        Failure::Unexpected(format!("jsep is not {{type, sdp}}: {e}"))
                    })?),
                    None => None,
                };
                if let Some(plugin) = self.plugindata {
                    let data = plugin.get("data").cloned().unwrap_or_default();
                    if let Some(code) = data.get("error_code").and_then(Value::as_u64) {
                        return Err(Failure::VideoRoom {
                            code: u32::try_from(code).unwrap_or(u32::MAX),
                            reason: data
                                .get("error")
                                .and_then(Value::as_str)
                                .unwrap_or("(no reason)")
                                .to_string(),
                        });
                    }
                    return Ok(Reply::Plugin { data, jsep });
                }
                if self.janus == "event" {
                    return Ok(Reply::Other("event without plugin data".into()));
                }
                match self.data.as_ref().and_then(|d| d.get("id")) {
                    Some(id) => id.as_u64().map(Reply::Created).ok_or_else(|| {
                        Failure::Unexpected(format!("created id is not a number: {id}"))
                    }),
                    None => Ok(Reply::Done),
                }
            }
            other => Ok(Reply::Other(other.to_string())),
        }
    }
}

/// A session description as Janus carries it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Jsep {
    #[serde(rename = "type")]
    kind: String,
    sdp: String,
}

impl Jsep {
    fn offer(sdp: String) -> Jsep {
        Jsep {
            kind: "offer".into(),
            sdp,
        }
    }

    fn answer(sdp: String) -> Jsep {
        Jsep {
            kind: "answer".into(),
            sdp,
        }
    }
}

/// The VideoRoom plugin's answer (`plugindata.data`), the fields this adapter reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct VideoRoomData {
    /// What happened: `created`, `joined`, `participants`, `attached`, `event`, ...
    #[serde(default)]
    videoroom: Option<String>,
    /// The participant (feed) id, in `joined`.
    #[serde(default)]
    id: Option<FeedId>,
    #[serde(default)]
    participants: Option<Vec<Participant>>,
    /// `"ok"` once a `publish`/`configure` was applied.
    #[serde(default)]
    configured: Option<String>,
    /// `"ok"` once a subscriber's `start` was applied.
    #[serde(default)]
    started: Option<String>,
}

impl VideoRoomData {
    fn from_plugin(data: Value) -> Result<VideoRoomData, Failure> {
        serde_json::from_value(data)
            .map_err(|e| Failure::Unexpected(format!("videoroom data does not parse: {e}")))
    }

    /// Fails unless the plugin answered with `videoroom: {kind}`.
    fn require(&self, kind: &str) -> Result<(), Failure> {
        if self.videoroom.as_deref() == Some(kind) {
            Ok(())
        } else {
            Err(Failure::unexpected(kind, self))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Participant {
    /// Numeric: Janus's default `string_ids = false`.
    id: FeedId,
    #[serde(default)]
    display: Option<String>,
    /// Publishing now (its PeerConnection is up), not just joined.
    #[serde(default)]
    publisher: bool,
}

/// Janus's `rid_order` for an offer with simulcast: Janus takes the first rid of
/// `a=simulcast:send` as the highest layer unless told `"lmh"`. Our publishers list `q;h;f`
/// (quarter, half, full: lowest first), as do browsers asked for `l;m;h`; without the hint Janus
/// would forward the quarter layer as its "highest". `None` without simulcast.
fn rid_order(sdp: &str) -> Option<&'static str> {
    let layers = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=simulcast:send "))?;
    let first = layers
        .split(|c: char| c == ';' || c == ',' || c.is_whitespace())
        .next()?
        .trim_start_matches('~');
    Some(if matches!(first, "q" | "l" | "low") {
        "lmh"
    } else {
        "hml"
    })
}

/// Cuts a body for an error message.
fn clip(body: &str) -> &str {
    let mut end = body.len().min(200);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    &body[..end]
}

/// Janus's HTTP API: POSTs of Janus requests, long polls of session events.
#[derive(Debug, Clone)]
struct Api {
    agent: ureq::Agent,
    /// The API root, no trailing slash.
    base: String,
    /// Transaction ids are `{prefix}-{counter}`, unique per process run and instance.
    prefix: u32,
    counter: Arc<AtomicU64>,
}

impl Api {
    fn new(base_url: &str) -> Api {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .max_redirects(0)
            .build();
        Api {
            agent: ureq::Agent::new_with_config(config),
            base: base_url.trim_end_matches('/').to_string(),
            prefix: rand::random(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    fn transaction(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n}", self.prefix)
    }

    fn url(&self, path: &str) -> String {
        if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{path}", self.base)
        }
    }

    /// POSTs `{"janus": request, ...fields}` to `path` (below the API root) and interprets
    /// the reply.
    fn post(&self, path: &str, request: &str, fields: Value) -> Result<Reply, Failure> {
        self.send(path, request, &self.transaction(), fields, HTTP_TIMEOUT)
    }

    /// [`Api::post`] with the caller's transaction id and timeout.
    fn send(
        &self,
        path: &str,
        request: &str,
        transaction: &str,
        fields: Value,
        timeout: Duration,
    ) -> Result<Reply, Failure> {
        let mut envelope = Map::new();
        envelope.insert("janus".into(), request.into());
        envelope.insert("transaction".into(), transaction.into());
        if let Value::Object(fields) = fields {
            envelope.extend(fields);
        }
        let url = self.url(path);
        let body = serde_json::to_vec(&envelope)
            .map_err(|e| Failure::Unexpected(format!("request does not serialize: {e}")))?;
        let response = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json")
            .send(&body[..]);
        let text = ok_body(read_body(response), "POST", &url)?;
        let message = Message::parse(&text)?;
        if message.transaction.as_deref() != Some(transaction) && message.janus != "error" {
            return Err(Failure::Unexpected(format!(
                "{request}: reply for transaction {:?}, expected {transaction:?}",
                message.transaction
            )));
        }
        message.into_reply()
    }

    /// One long poll of a session's events, bounded by `timeout`. A poll that runs into the
    /// timeout returns no events.
    fn poll(&self, session: SessionId, timeout: Duration) -> Result<Vec<Message>, Failure> {
        let url = format!("{}/{session}?maxev={EVENTS_PER_POLL}", self.base);
        let response = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call();
        match read_body(response) {
            Err(ureq::Error::Timeout(_)) => Ok(Vec::new()),
            other => Message::parse_batch(&ok_body(other, "GET", &url)?),
        }
    }

    fn keepalive(&self, session: SessionId) -> Result<(), Failure> {
        self.send(
            &session.to_string(),
            "keepalive",
            &self.transaction(),
            json!({}),
            KEEPALIVE_TIMEOUT,
        )
        .map(|_| ())
    }
}

/// Status and body of a response (bodies above [`MAX_BODY`] are an error).
fn read_body(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), ureq::Error> {
    let mut response = response?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()?;
    Ok((status, body))
}

/// The body of a `200` response; anything else is a failure of the HTTP exchange.
fn ok_body(
    response: Result<(u16, String), ureq::Error>,
    method: &str,
    url: &str,
) -> Result<String, Failure> {
    match response {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(Failure::Http(PeerFailure::Status { status, body })),
        Err(e) => Err(Failure::Http(PeerFailure::Unreachable(format!(
            "{method} {url}: {e}"
        )))),
    }
}

/// Janus sessions to keep alive.
#[derive(Debug, Default)]
struct LiveSessions(Mutex<BTreeSet<SessionId>>);

impl LiveSessions {
    fn insert(&self, session: SessionId) {
        lock(&self.0).insert(session);
    }

    fn remove(&self, session: SessionId) {
        lock(&self.0).remove(&session);
    }

    fn len(&self) -> usize {
        lock(&self.0).len()
    }

    fn snapshot(&self) -> Vec<SessionId> {
        lock(&self.0).iter().copied().collect()
    }
}

/// The keepalive thread: every [`KEEPALIVE_PERIOD`] it sends `keepalive` for each live session.
/// Stopping is bounded by one [`KEEPALIVE_TIMEOUT`]: the stop signal is checked between
/// requests.
#[derive(Debug)]
struct Keepalive {
    stop: Sender<()>,
    join: JoinHandle<()>,
}

impl Keepalive {
    fn spawn(api: Api, live: Arc<LiveSessions>) -> std::io::Result<Keepalive> {
        let (stop, stopped) = mpsc::channel();
        let join = thread::Builder::new()
            .name("janus-keepalive".into())
            .spawn(move || keep_alive(&api, &live, &stopped))?;
        Ok(Keepalive { stop, join })
    }

    fn stop(self) {
        drop(self.stop);
        // Join fails only if the thread panicked, and nothing in it panics.
        let _ = self.join.join();
    }
}

fn keep_alive(api: &Api, live: &LiveSessions, stopped: &Receiver<()>) {
    loop {
        match stopped.recv_timeout(KEEPALIVE_PERIOD) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        for session in live.snapshot() {
            if !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                return;
            }
            match api.keepalive(session) {
                Ok(()) => {}
                Err(Failure::Janus { code, .. }) if code == JANUS_ERROR_SESSION_NOT_FOUND => {
                    tracing::warn!("janus: session {session} expired on the server");
                    live.remove(session);
                }
                Err(e) => tracing::debug!("janus: keepalive of session {session} failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Replies recorded from Janus 1.1.2 (Debian bookworm), http transport, json = "compact".
    const CREATED: &str =
        r#"{"janus":"success","transaction":"t1","data":{"id":5351618510888594}}"#;
    const ATTACHED: &str = r#"{"janus":"success","session_id":5351618510888594,"transaction":"t2","data":{"id":6921606098921802}}"#;
    const ROOM_CREATED: &str = r#"{"janus":"success","session_id":5351618510888594,"transaction":"t4","sender":6921606098921802,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"created","room":42,"permanent":false}}}"#;
    const ROOM_EXISTS: &str = r#"{"janus":"success","session_id":5351618510888594,"transaction":"t5","sender":6921606098921802,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","error_code":427,"error":"Room 42 already exists"}}}"#;
    const ACK: &str = r#"{"janus":"ack","session_id":5351618510888594,"transaction":"t7"}"#;
    const JOINED: &str = r#"[{"janus":"event","session_id":5351618510888594,"transaction":"t7","sender":6921606098921802,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"joined","room":42,"description":"Room 42","id":8990806244152544,"private_id":661755698,"publishers":[]}}}]"#;
    const NO_SUCH_FEED: &str = r#"[{"janus":"event","session_id":3950613531882968,"transaction":"s1","sender":8825379315019661,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","error_code":428,"error":"No such feed (1234)"}}}]"#;
    const NO_SUCH_SESSION: &str = r#"{"janus":"error","session_id":12345,"transaction":"t11","error":{"code":458,"reason":"No such session 12345"}}"#;
    const BAD_JSON: &str = r#"{"janus":"error","error":{"code":454,"reason":"JSON error: on line 1: '[' or '{' expected near 'not'"}}"#;
    const POLL_TIMEOUT: &str = r#"{"janus":"keepalive"}"#;
    const DESTROYED: &str =
        r#"{"janus":"success","session_id":5351618510888594,"transaction":"t13"}"#;
    const PARTICIPANTS: &str = r#"{"janus":"success","session_id":1,"transaction":"t6","sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"participants","room":42,"participants":[{"id":111,"display":"pub-0","publisher":true},{"id":222,"display":"pub-1","publisher":false},{"id":333,"publisher":true}]}}}"#;
    const PUBLISHED: &str = r#"[{"janus":"webrtcup","session_id":1,"sender":2},{"janus":"event","session_id":1,"transaction":"t8","sender":2,"plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","room":42,"configured":"ok","video_codec":"vp8","streams":[]}},"jsep":{"type":"answer","sdp":"v=0\r\n"}}]"#;

    fn reply(body: &str) -> Result<Reply, Failure> {
        Message::parse(body).and_then(Message::into_reply)
    }

    #[test]
    fn created_sessions_and_handles_yield_their_ids() {
        assert_eq!(reply(CREATED), Ok(Reply::Created(5_351_618_510_888_594)));
        assert_eq!(reply(ATTACHED), Ok(Reply::Created(6_921_606_098_921_802)));
        assert_eq!(reply(DESTROYED), Ok(Reply::Done));
        assert_eq!(reply(ACK), Ok(Reply::Ack));
        assert_eq!(reply(POLL_TIMEOUT), Ok(Reply::Other("keepalive".into())));
    }

    #[test]
    fn plugin_answers_and_errors_are_told_apart() {
        let Ok(Reply::Plugin { data, jsep: None }) = reply(ROOM_CREATED) else {
            panic!("{:?}", reply(ROOM_CREATED));
        };
        let data = VideoRoomData::from_plugin(data).expect("videoroom data");
        assert_eq!(data.require("created"), Ok(()));
        assert!(data.require("joined").is_err());

        assert_eq!(
            reply(ROOM_EXISTS),
            Err(Failure::VideoRoom {
                code: VIDEOROOM_ERROR_ROOM_EXISTS,
                reason: "Room 42 already exists".into()
            })
        );
        assert_eq!(
            reply(NO_SUCH_SESSION),
            Err(Failure::Janus {
                code: JANUS_ERROR_SESSION_NOT_FOUND,
                reason: "No such session 12345".into()
            })
        );
        let bad = reply(BAD_JSON).expect_err("an error");
        assert!(matches!(bad, Failure::Janus { code: 454, .. }), "{bad:?}");
        let failure: PeerFailure = bad.into();
        assert_eq!(failure.reason(), "signaling");
        assert!(failure.to_string().contains("454"), "{failure}");
    }

    #[test]
    fn long_poll_batches_carry_events_with_jsep() {
        let batch = Message::parse_batch(PUBLISHED).expect("batch");
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].transaction, None);
        assert_eq!(batch[1].transaction.as_deref(), Some("t8"));
        let Ok(Reply::Plugin {
            data,
            jsep: Some(jsep),
        }) = batch[1].clone().into_reply()
        else {
            panic!("{:?}", batch[1]);
        };
        assert_eq!(jsep, Jsep::answer("v=0\r\n".into()));
        let data = VideoRoomData::from_plugin(data).expect("data");
        assert_eq!(data.configured.as_deref(), Some("ok"));

        let joined = Message::parse_batch(JOINED).expect("batch");
        let Ok(Reply::Plugin { data, .. }) = joined[0].clone().into_reply() else {
            panic!("{joined:?}");
        };
        assert_eq!(
            VideoRoomData::from_plugin(data).and_then(|d| d.require("joined")),
            Ok(())
        );

        let feed = Message::parse_batch(NO_SUCH_FEED).expect("batch");
        assert!(matches!(
            feed[0].clone().into_reply(),
            Err(Failure::VideoRoom {
                code: VIDEOROOM_ERROR_NO_SUCH_FEED,
                ..
            })
        ));

        // A single message (the server-side poll timeout) is a batch of one.
        let single = Message::parse_batch(POLL_TIMEOUT).expect("single");
        assert_eq!(single.len(), 1);
    }

    #[test]
    fn subscribers_follow_the_newest_active_publisher_not_their_own() {
        let Ok(Reply::Plugin { data, .. }) = reply(PARTICIPANTS) else {
            panic!("{:?}", reply(PARTICIPANTS));
        };
        let listed = VideoRoomData::from_plugin(data)
            .expect("data")
            .participants
            .expect("participants");
        let mut order = FeedOrder::default();
        // 111 (pub-0) and 333 are publishing, 222 only joined. Neither is ours: highest id.
        assert_eq!(order.newest(&listed, "viewer"), Some(FeedId(333)));
        order.started(SessionId(10), FeedId(333));
        order.started(SessionId(11), FeedId(111));
        assert_eq!(
            order.newest(&listed, "viewer"),
            Some(FeedId(111)),
            "started last"
        );
        assert_eq!(
            order.newest(&listed, "pub-0"),
            Some(FeedId(333)),
            "not its own"
        );
        order.ended(SessionId(11));
        assert_eq!(order.newest(&listed, "viewer"), Some(FeedId(333)));
        assert_eq!(order.newest(&[], "viewer"), None);

        let Ok(Reply::Plugin { data, .. }) = Message::parse_batch(JOINED)
            .expect("batch")
            .remove(0)
            .into_reply()
        else {
            panic!("joined");
        };
        let joined = VideoRoomData::from_plugin(data).expect("data");
        assert_eq!(joined.id, Some(FeedId(8_990_806_244_152_544)));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for body in [
            "",
            "not json",
            "[]",
            "42",
            r#"{"transaction":"x"}"#,
            r#"{"janus":"success","data":{"id":"abc"}}"#,
            r#"{"janus":"success","data":{"id":-1}}"#,
            r#"{"janus":"event","plugindata":{"data":{"error_code":"x"}},"jsep":{"type":1}}"#,
            r#"{"janus":"error"}"#,
            r#"{"janus":"error","error":{"code":99999999999}}"#,
        ] {
            let _ = reply(body);
            let _ = Message::parse_batch(body);
        }
        assert!(reply(r#"{"janus":"success","data":{"id":"abc"}}"#).is_err());
        let batch = Message::parse_batch(r#"[{"janus":"ack"},{"no":"envelope"},7]"#);
        assert_eq!(batch.map(|b| b.len()), Ok(1));
        // Plugin data of the wrong shape fails only when it is read.
        let odd = r#"{"janus":"success","transaction":"t","plugindata":{"data":{"videoroom":"participants","participants":[{"id":"x"}]}}}"#;
        let Ok(Reply::Plugin { data, .. }) = reply(odd) else {
            panic!("{:?}", reply(odd));
        };
        assert!(VideoRoomData::from_plugin(data).is_err());
    }

    #[test]
    fn room_ids_are_stable_nonzero_and_javascript_safe() {
        // FNV-1a 64 of "" is the offset basis; of "a" a published test vector.
        assert_eq!(room_id(""), 0xcbf2_9ce4_8422_2325 & ((1 << 53) - 1));
        assert_eq!(room_id("a"), 0xaf63_dc4c_8601_ec8c & ((1 << 53) - 1));
        assert_eq!(room_id("room-1"), room_id("room-1"));
        assert_ne!(room_id("room-1"), room_id("room-2"));
        for name in ["", "a", "room-0", "🦀 room", "x".repeat(1000).as_str()] {
            let id = room_id(name);
            assert!(id > 0 && id < (1 << 53), "{name}: {id}");
        }
    }

    #[test]
    fn session_handles_round_trip() {
        let (session, handle) = (
            SessionId(5_351_618_510_888_594),
            HandleId(6_921_606_098_921_802),
        );
        let id = format_handle(session, handle);
        assert_eq!(id, "5351618510888594/6921606098921802");
        assert_eq!(parse_handle(&id), Some((session, handle)));
        assert_eq!(parse_handle("http://x/whip/1"), None);
        assert_eq!(parse_handle("1/"), None);
    }

    #[test]
    fn simulcast_offers_tell_janus_the_rid_order() {
        let offer = |line: &str| format!("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n{line}\r\n");
        assert_eq!(rid_order(&offer("a=simulcast:send q;h;f")), Some("lmh"));
        assert_eq!(rid_order(&offer("a=simulcast:send l;m;h")), Some("lmh"));
        assert_eq!(rid_order(&offer("a=simulcast:send ~q;h;f")), Some("lmh"));
        assert_eq!(rid_order(&offer("a=simulcast:send f;h;q")), Some("hml"));
        assert_eq!(rid_order(&offer("a=simulcast:send h;m;l")), Some("hml"));
        assert_eq!(rid_order(&offer("a=simulcast:recv q;h;f")), None);
        assert_eq!(rid_order(&offer("a=sendonly")), None);
        assert_eq!(rid_order(&offer("a=simulcast:send ")), None);
    }

    #[test]
    fn descriptions_are_cut_on_char_boundaries() {
        let long = "é".repeat(100);
        let d = description(&long);
        assert!(d.len() <= "sfu-load ".len() + 64, "{d}");
        assert_eq!(description("r"), "sfu-load r");
        assert_eq!(clip("é"), "é");
    }

    #[test]
    fn unreachable_servers_fail_fast_and_do_not_leak_sessions() {
        // Nothing listens on the discard port of loopback.
        let janus = JanusVideoRoom::new("http://127.0.0.1:9/janus")
            .negotiation_timeout(Duration::from_secs(2));
        let mut client = NoMedia;
        let started = Instant::now();
        let err = janus
            .publish("room", "me", &mut client)
            .expect_err("no server");
        assert_eq!(err.reason(), "unreachable", "{err}");
        assert!(started.elapsed() < HTTP_TIMEOUT, "{:?}", started.elapsed());
        assert_eq!(janus.live_sessions(), 0);
        let leave = janus.leave(&SessionHandle {
            id: "not-janus".into(),
            token: None,
            node: None,
        });
        assert_eq!(leave.map_err(|e| e.reason()), Err("signaling".into()));
        // Drop stops the keepalive thread promptly.
        let dropped = Instant::now();
        drop(janus);
        assert!(dropped.elapsed() < Duration::from_secs(1));
    }

    /// An `SdpClient` for tests that never get as far as media.
    struct NoMedia;

    impl SdpClient for NoMedia {
        fn create_offer(&mut self) -> Result<String, PeerFailure> {
            Err(PeerFailure::BadSdp("no media in this test".into()))
        }
        fn accept_answer(&mut self, _answer: &str) -> Result<(), PeerFailure> {
            Ok(())
        }
        fn answer_offer(&mut self, _offer: &str) -> Result<String, PeerFailure> {
            Err(PeerFailure::BadSdp("no media in this test".into()))
        }
    }
}

/// Against a real Janus (`bench/janus/start.sh`): set `JANUS_URL` to the URL it prints and, if
/// not 10.77.0.2, `JANUS_BIND` to the address the peers' sockets bind to. Skipped (with a
/// note on stderr) when `JANUS_URL` is unset.
#[cfg(test)]
mod live {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use super::*;
    use crate::pattern::{PayloadKind, VideoCodec};
    use crate::publisher::{Publisher, PublisherConfig, VideoConfig};
    use crate::reception::Reception;
    use crate::subscriber::{Subscriber, SubscriberConfig};

    const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    fn janus() -> Option<(String, IpAddr)> {
        let Ok(url) = std::env::var("JANUS_URL") else {
            eprintln!("skipped: JANUS_URL is unset (start Janus with bench/janus/start.sh)");
            return None;
        };
        let bind = std::env::var("JANUS_BIND")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(IpAddr::from([10, 77, 0, 2]));
        Some((url, bind))
    }

    /// Audio and `codec`-framed video at 30 fps, 3000-byte frames at the top layer and a
    /// keyframe a second, optionally simulcast q/h/f.
    fn publish(
        janus: &Arc<JanusVideoRoom>,
        room: &str,
        bind: IpAddr,
        codec: VideoCodec,
        simulcast: bool,
    ) -> Publisher {
        let config = PublisherConfig {
            bind_ip: bind,
            ..PublisherConfig::new("", room, "")
        }
        .video(Some(VideoConfig {
            fps: 30,
            keyframe_interval: 30,
            simulcast,
            frame_bytes: 3000,
            codec,
        }));
        Publisher::connect_via(janus.clone(), "pub-0", &config)
            .expect("janus accepts the publisher")
    }

    struct Subscribed {
        sub: Subscriber,
        /// From the `subscribe` call to Janus's `started`.
        signaled: Duration,
    }

    fn subscribe(
        janus: &Arc<JanusVideoRoom>,
        room: &str,
        bind: IpAddr,
        identity: &str,
    ) -> Subscribed {
        let config = SubscriberConfig {
            bind_ip: bind,
            ..SubscriberConfig::new("", room, "")
        };
        let started = Instant::now();
        let sub = Subscriber::connect_via(janus.clone(), identity, config)
            .expect("janus accepts the subscriber");
        Subscribed {
            sub,
            signaled: started.elapsed(),
        }
    }

    /// What a subscriber received since `from` (an earlier copy of its reception).
    #[derive(Debug, Default, Clone)]
    struct Received {
        packets: BTreeMap<&'static str, u64>,
        /// Keyframe starts among the video packets.
        video_keyframes: u64,
        /// Video layers (pattern layer index) seen.
        video_layers: BTreeMap<u8, u64>,
    }

    fn received_since(r: &Reception, from: &Reception) -> Received {
        let mut got = Received::default();
        for (name, kind) in [("audio", PayloadKind::Audio), ("video", PayloadKind::Video)] {
            let packets = r.totals(kind).intact - from.totals(kind).intact;
            got.packets.insert(name, packets);
        }
        let undecodable = r.audio.corrupt + r.video.corrupt + r.unknown_media
            - (from.audio.corrupt + from.video.corrupt + from.unknown_media);
        if undecodable > 0 {
            got.packets.insert("undecodable", undecodable);
        }
        for p in &r.packets[from.packets.len()..] {
            let Some(d) = p.decoded().filter(|_| p.kind == PayloadKind::Video) else {
                continue;
            };
            got.video_keyframes += u64::from(d.starts_keyframe());
            *got.video_layers.entry(d.header.layer).or_default() += 1;
        }
        got
    }

    /// How long media is measured: `JANUS_LIVE_SECONDS` (default 4; set it above Janus's
    /// 60 s session timeout to check the keepalives).
    fn media_time() -> Duration {
        std::env::var("JANUS_LIVE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(Duration::from_secs(4), Duration::from_secs)
    }

    /// One publisher; `subscribers` subscribers, who join concurrently, after the publisher is
    /// connected or (`early`) before it publishes.
    fn exchange(codec: VideoCodec, simulcast: bool, subscribers: usize, early: bool) {
        let Some((url, bind)) = janus() else {
            return;
        };
        let janus = Arc::new(JanusVideoRoom::new(&url));
        let room = format!("live-{}", rand::random::<u32>());
        let media_time = media_time();

        let started = Instant::now();
        let (publisher, subs) = std::thread::scope(|scope| {
            let join_all = || {
                let janus = &janus;
                let room = room.as_str();
                (0..subscribers)
                    .map(|i| scope.spawn(move || subscribe(janus, room, bind, &format!("sub-{i}"))))
                    .collect::<Vec<_>>()
            };
            let early_subs = early.then(join_all);
            if early {
                // Let them find the room empty and wait.
                std::thread::sleep(Duration::from_millis(600));
            }
            let publisher = publish(&janus, &room, bind, codec, simulcast);
            eprintln!("publisher signaled in {:?}", started.elapsed());
            assert!(
                publisher.wait_connected(CONNECT_TIMEOUT),
                "publisher ICE+DTLS to Janus: {:?}",
                publisher.state().error()
            );
            eprintln!("publisher connected in {:?}", started.elapsed());
            let subs: Vec<Subscribed> = early_subs
                .unwrap_or_else(join_all)
                .into_iter()
                .map(|h| h.join().expect("subscriber thread"))
                .collect();
            (publisher, subs)
        });
        for s in &subs {
            assert!(
                s.sub.wait_connected(CONNECT_TIMEOUT),
                "subscriber ICE+DTLS to Janus: {:?}",
                s.sub.state().error()
            );
        }
        eprintln!(
            "{} subscribers signaled in {:?} .. {:?}, all connected {:?} after the start",
            subs.len(),
            subs.iter().map(|s| s.signaled).min().unwrap_or_default(),
            subs.iter().map(|s| s.signaled).max().unwrap_or_default(),
            started.elapsed()
        );
        // Count from here: what arrived before connecting everyone is not compared.
        let from: Vec<Reception> = subs.iter().map(|s| s.sub.reception()).collect();
        std::thread::sleep(media_time);
        let stats = publisher.stats();
        let sent = stats.audio_packets + stats.video_packets.iter().sum::<u64>();
        for (s, from) in subs.iter().zip(&from) {
            let got = received_since(&s.sub.reception(), from);
            eprintln!(
                "{codec:?} simulcast={simulcast}: received {got:?} in {media_time:?} (publisher: \
                 {sent} packets sent in all, {} keyframe requests)",
                stats.keyframe_requests
            );
            let expect = media_time.as_secs();
            // 50 audio packets a second, at least 30 video packets (one per frame).
            let audio = got.packets.get("audio").copied().unwrap_or(0);
            let video = got.packets.get("video").copied().unwrap_or(0);
            assert!(audio >= 45 * expect, "{got:?}");
            assert!(video >= 28 * expect, "{got:?}");
            assert_eq!(got.packets.get("undecodable"), None, "{got:?}");
            if simulcast {
                // Janus forwards the top layer (rid f, pattern layer 2).
                let top = got.video_layers.get(&2).copied().unwrap_or(0);
                assert!(top * 10 >= video * 9, "{got:?}");
            }
        }
        assert_eq!(janus.live_sessions(), subs.len() + 1);

        for s in subs {
            s.sub.close().expect("subscriber leaves");
        }
        let publisher_session = SessionHandle {
            id: publisher.location().to_string(),
            token: None,
            node: None,
        };
        publisher.close().expect("publisher leaves");
        assert_eq!(janus.live_sessions(), 0);
        // Leaving twice is harmless.
        janus
            .leave(&publisher_session)
            .expect("already gone counts as left");
    }

    #[test]
    fn single_layer_media_flows_through_janus() {
        exchange(VideoCodec::Vp8, false, 1, false);
    }

    #[test]
    fn simulcast_media_flows_through_janus() {
        exchange(VideoCodec::Vp8, true, 1, false);
    }

    #[test]
    fn h264_media_flows_through_janus() {
        exchange(VideoCodec::H264, false, 1, false);
    }

    #[test]
    fn early_subscribers_wait_for_the_publisher() {
        exchange(VideoCodec::Vp8, false, 6, true);
    }

    #[test]
    fn subscribing_to_an_empty_room_times_out() {
        let Some((url, bind)) = janus() else {
            return;
        };
        let janus = Arc::new(JanusVideoRoom::new(&url).negotiation_timeout(Duration::from_secs(1)));
        let room = format!("live-empty-{}", rand::random::<u32>());
        let config = SubscriberConfig {
            bind_ip: bind,
            ..SubscriberConfig::new("", &room, "")
        };
        let err =
            Subscriber::connect_via(janus.clone(), "sub-0", config).expect_err("nobody publishes");
        assert!(err.to_string().contains("no publisher"), "{err}");
        assert_eq!(janus.live_sessions(), 0);
    }
}
