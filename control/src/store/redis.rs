//! The Redis backend of the [store](super): several control instances share the session
//! index, the caps' counts, the room → node map, the node registry and meeting rooms' rosters,
//! forward node requests to the instance holding a node's link over pub/sub, and relay room
//! events to every instance with listeners in the room (one pub/sub connection each).
//!
//! Key layout (one Redis, no cluster mode: the scripts touch several keys):
//! - `sfu:session:{id}` — the session record (JSON, versioned: [`encode_record`]).
//! - `sfu:count:identity`, `sfu:count:room`, `sfu:count:node` — hashes name → sessions;
//!   `sfu:count:total` — sessions in all.
//! - `sfu:room:{room}:nodes` — hash node → sessions of the room there (placement).
//! - `sfu:room:{room}:sessions`, `sfu:node:{node}:sessions` — sets of session ids.
//! - `sfu:rooms` — set of rooms with sessions; `sfu:tracks:{id}` — hash track → JSON.
//! - `sfu:registry` — set of node ids; `sfu:nodeinfo:{node}` — [`RegistryEntry`] (JSON)
//!   with a TTL, refreshed by the instance holding the node's link.
//! - channel `sfu:instance:{instance}` — [`Envelope`]s for that instance.
//! - `sfu:rtc:{room}:roster` — a meeting room's roster ([rooms](super::rooms)): hash
//!   identity → JSON `{v, pid, data, expires_ms}` (written by the scripts' `cjson`).
//!   `expires_ms` is Redis's own clock (`TIME`, read inside the scripts) plus the writer's lease
//!   ([`ROSTER_LEASE`]): an entry not renewed by then is ignored, and deleted by the next
//!   script that reads it. The hash's TTL is pushed to at least twice the lease on every write,
//!   so a room whose every writer died vanishes by itself.
//! - channel `sfu:rtc:{room}:events` — the room's event feed.
//! - `sfu:rtc:{room}:settings`, `sfu:rtc:{room}:mode` — a room's named values (JSON,
//!   control's `rtc` module defines them): its options, set by an admin, and its media mode,
//!   written by its chair; no TTL.
//! - `sfu:rtc:{room}:chair` — which control instance's chair runs the room's floor and media
//!   mode (its holder name), with the lease as TTL.
//!
//! Every value read back is parsed; a value control did not write is
//! [`StoreError::Corrupt`], never a panic.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use serde::{Deserialize, Serialize};
use sfu_core::SessionKind;
use sfu_core::ids::{NodeId, SessionId, TrackId, WorkerId};
use sfu_core::proto::RelayAddress;
use sfu_core::proto::{HeldSession, NodeError, NodeRequest, NodeResponse, TrackInfo};
use tokio::sync::{Notify, broadcast, oneshot};

use super::rooms::{FEED_CAPACITY, RoomFeed, RosterEntry, RosterJoin};
use super::{
    CapExceeded, Caps, PlacementView, ReserveError, SessionRecord, StoreError, StoreHealth,
};
use crate::cluster::NodeState;

/// How long one Redis command may take before the store counts as unreachable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Version of the values control writes; another version reads as corrupt.
const VERSION: u8 = 1;

/// Record a session, if no cap is reached: checks and counts in one step.
const RESERVE: &str = r#"
local function at(cap, n) return cap > 0 and n >= cap end
if at(tonumber(ARGV[6]) or 0, tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') or 0) then return 'identity' end
if at(tonumber(ARGV[7]) or 0, tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0') or 0) then return 'room' end
if at(tonumber(ARGV[8]) or 0, tonumber(redis.call('GET', KEYS[4]) or '0') or 0) then return 'total' end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 'exists' end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('INCR', KEYS[4])
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
redis.call('HINCRBY', KEYS[6], ARGV[4], 1)
redis.call('SADD', KEYS[7], ARGV[5])
redis.call('SADD', KEYS[8], ARGV[5])
redis.call('SADD', KEYS[9], ARGV[3])
return 'ok'
"#;

/// An invocation of [`RESERVE`] or [`REMOVE`] for session `id`: both scripts read the same
/// KEYS[1..9] (the record, the counts, the room's and node's sets, the room list) and ARGV[1..5]
/// (the record, identity, room, node, session id); each adds its own after them.
fn session_script<'a>(
    script: &'a redis::Script,
    id: SessionId,
    record: &SessionRecord,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(session_key(id))
        .key(COUNT_IDENTITY)
        .key(COUNT_ROOM)
        .key(COUNT_TOTAL)
        .key(COUNT_NODE)
        .key(room_nodes_key(&record.room))
        .key(room_sessions_key(&record.room))
        .key(node_sessions_key(&record.node))
        .key(ROOMS)
        .arg(encode_record(record))
        .arg(&record.identity)
        .arg(&record.room)
        .arg(record.node.to_string())
        .arg(id.to_string());
    invocation
}

/// Forget a session and release its counts, once: only the caller whose DEL removed the
/// record releases them.
const REMOVE: &str = r#"
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
local function down(key, field)
  if redis.call('HINCRBY', key, field, -1) <= 0 then redis.call('HDEL', key, field) end
end
down(KEYS[2], ARGV[2])
down(KEYS[3], ARGV[3])
if redis.call('DECR', KEYS[4]) < 0 then redis.call('SET', KEYS[4], 0) end
down(KEYS[5], ARGV[4])
down(KEYS[6], ARGV[4])
redis.call('SREM', KEYS[7], ARGV[5])
redis.call('SREM', KEYS[8], ARGV[5])
if redis.call('EXISTS', KEYS[6]) == 0 then redis.call('SREM', KEYS[9], ARGV[3]) end
redis.call('DEL', KEYS[10])
return 1
"#;

const COUNT_IDENTITY: &str = "sfu:count:identity";
const COUNT_ROOM: &str = "sfu:count:room";
const COUNT_TOTAL: &str = "sfu:count:total";
const COUNT_NODE: &str = "sfu:count:node";
const ROOMS: &str = "sfu:rooms";
const REGISTRY: &str = "sfu:registry";

fn session_key(id: SessionId) -> String {
    format!("sfu:session:{id}")
}
fn room_nodes_key(room: &str) -> String {
    format!("sfu:room:{room}:nodes")
}
fn room_sessions_key(room: &str) -> String {
    format!("sfu:room:{room}:sessions")
}
fn node_sessions_key(node: &NodeId) -> String {
    format!("sfu:node:{node}:sessions")
}
fn tracks_key(id: SessionId) -> String {
    format!("sfu:tracks:{id}")
}
fn node_info_key(node: &str) -> String {
    format!("sfu:nodeinfo:{node}")
}
/// The pub/sub channel of control instance `instance`.
pub fn instance_channel(instance: &str) -> String {
    format!("sfu:instance:{instance}")
}

fn value_key(room: &str, name: &str) -> String {
    format!("sfu:rtc:{room}:{name}")
}
fn chair_key(room: &str) -> String {
    format!("sfu:rtc:{room}:chair")
}

/// Take (ARGV[1] = holder) or renew the chair lease for ARGV[2] ms: 1, or 0 while another
/// holder's lease runs.
const CHAIR_LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Delete the chair lease if ARGV[1] holds it.
const CHAIR_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// The hash holding `room`'s roster.
pub fn roster_key(room: &str) -> String {
    format!("sfu:rtc:{room}:roster")
}

const ROOM_CHANNEL_PREFIX: &str = "sfu:rtc:";
const ROOM_CHANNEL_SUFFIX: &str = ":events";

/// The pub/sub channel of `room`'s events.
pub fn room_channel(room: &str) -> String {
    format!("{ROOM_CHANNEL_PREFIX}{room}{ROOM_CHANNEL_SUFFIX}")
}

/// The room whose events `channel` carries.
fn channel_room(channel: &str) -> Option<&str> {
    channel
        .strip_prefix(ROOM_CHANNEL_PREFIX)?
        .strip_suffix(ROOM_CHANNEL_SUFFIX)
}

/// How long a roster entry stays after its last put or update. Its writer renews it well
/// before (every ~10 s); an entry of an instance that died leaves within this.
pub const ROSTER_LEASE: Duration = Duration::from_secs(30);

/// What the roster scripts share. Every roster script takes KEYS[1] = the roster hash and
/// ARGV[1] = [`VERSION`], ARGV[2] = the lease (ms), ARGV[3] = the identity, ARGV[4] = the pid;
/// each adds its own after them. `read` gives an entry's fields, or nil for a value control
/// cannot read (the caller answers `corrupt`); `write` stores an entry leased from `now` and
/// pushes the hash's TTL to at least twice the lease (never shortens it: another instance may
/// lease longer).
macro_rules! roster_lua {
    ($body:literal) => {
        concat!(
            r#"
local version = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function read(value)
  local ok, e = pcall(cjson.decode, value)
  if not ok or type(e) ~= 'table' or e.v ~= version or type(e.pid) ~= 'string'
    or type(e.data) ~= 'string' or type(e.expires_ms) ~= 'number' then
    return nil
  end
  return e
end
local function write(now, data)
  redis.call('HSET', KEYS[1], ARGV[3],
    cjson.encode({v = version, pid = ARGV[4], data = data, expires_ms = now + lease}))
  if redis.call('PTTL', KEYS[1]) < 2 * lease then
    redis.call('PEXPIRE', KEYS[1], 2 * lease)
  end
end
"#,
            $body
        )
    };
}

/// Put an entry (ARGV[5] = data, ARGV[6] = max): `joined`, `full` when `max` (> 0) other
/// identities hold unexpired entries, `corrupt` when one of theirs cannot be read. The same
/// identity's entry, expired or not, is replaced whatever its pid. Expired entries seen on
/// the way are deleted.
const ROSTER_PUT: &str = roster_lua!(
    r#"
local now = now_ms()
local max = tonumber(ARGV[6]) or 0
if max > 0 then
  local all = redis.call('HGETALL', KEYS[1])
  local others = 0
  for i = 1, #all, 2 do
    if all[i] ~= ARGV[3] then
      local e = read(all[i + 1])
      if not e then return 'corrupt' end
      if e.expires_ms <= now then
        redis.call('HDEL', KEYS[1], all[i])
      else
        others = others + 1
      end
    end
  end
  if others >= max then return 'full' end
end
write(now, ARGV[5])
return 'joined'
"#
);

/// Replace an entry's data (ARGV[5]) and renew its lease if join ARGV[4] owns it and its
/// lease has not run out: 1, else 0 (an expired entry is deleted), -1 if it cannot be read.
const ROSTER_UPDATE: &str = roster_lua!(
    r#"
local value = redis.call('HGET', KEYS[1], ARGV[3])
if not value then return 0 end
local e = read(value)
if not e then return -1 end
if e.pid ~= ARGV[4] then return 0 end
local now = now_ms()
if e.expires_ms <= now then
  redis.call('HDEL', KEYS[1], ARGV[3])
  return 0
end
write(now, ARGV[5])
return 1
"#
);

/// Delete an entry if join ARGV[4] owns it (expired or not): 1, else 0, -1 if it cannot be
/// read.
const ROSTER_REMOVE: &str = roster_lua!(
    r#"
local value = redis.call('HGET', KEYS[1], ARGV[3])
if not value then return 0 end
local e = read(value)
if not e then return -1 end
if e.pid ~= ARGV[4] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[3])
return 1
"#
);

/// The unexpired entries as a flat list identity, value, … (values control cannot read
/// included, for the caller to report); expired ones are deleted. ARGV[3] and ARGV[4] unused.
const ROSTER_READ: &str = roster_lua!(
    r#"
local now = now_ms()
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local e = read(all[i + 1])
  if e and e.expires_ms <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = all[i]
    live[#live + 1] = all[i + 1]
  end
end
return live
"#
);

/// A roster entry as stored (the identity is its hash field). Written by the scripts (Lua's
/// `cjson`), read here.
#[derive(Debug, Serialize, Deserialize)]
struct WireRosterEntry {
    v: u8,
    pid: String,
    data: String,
    /// When the lease runs out, in ms since the Unix epoch by Redis's clock (checked by the
    /// scripts only).
    expires_ms: u64,
}

/// A roster entry read from Redis; anything control did not write is an error.
pub fn decode_roster_entry(identity: &[u8], value: &[u8]) -> Result<RosterEntry, StoreError> {
    let identity = String::from_utf8(identity.to_vec())
        .map_err(|_| StoreError::Corrupt("a roster identity is not UTF-8".into()))?;
    let wire: WireRosterEntry = serde_json::from_slice(value)
        .map_err(|e| StoreError::Corrupt(format!("roster entry of {identity:?}: {e}")))?;
    if wire.v != VERSION {
        return Err(StoreError::Corrupt(format!(
            "roster entry of {identity:?}: version {} (this control writes {VERSION})",
            wire.v
        )));
    }
    Ok(RosterEntry {
        identity,
        pid: wire.pid,
        data: wire.data,
    })
}

/// The session record as stored.
#[derive(Debug, Serialize, Deserialize)]
struct WireRecord {
    v: u8,
    node: String,
    room: String,
    kind: SessionKind,
    identity: String,
    worker: Option<WorkerId>,
}

/// A session record as written to Redis.
pub fn encode_record(record: &SessionRecord) -> String {
    let wire = WireRecord {
        v: VERSION,
        node: record.node.to_string(),
        room: record.room.clone(),
        kind: record.kind,
        identity: record.identity.clone(),
        worker: record.worker,
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

/// A session record read from Redis; anything control did not write is an error.
pub fn decode_record(bytes: &[u8]) -> Result<SessionRecord, StoreError> {
    let wire: WireRecord = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("session record: {e}")))?;
    if wire.v != VERSION {
        return Err(StoreError::Corrupt(format!(
            "session record version {} (this control writes {VERSION})",
            wire.v
        )));
    }
    let node = wire
        .node
        .parse::<NodeId>()
        .map_err(|e| StoreError::Corrupt(format!("session record node: {e}")))?;
    Ok(SessionRecord {
        node,
        room: wire.room,
        kind: wire.kind,
        identity: wire.identity,
        worker: wire.worker,
    })
}

/// A count read from Redis (a decimal integer; a negative one reads as 0).
pub fn decode_count(bytes: &[u8]) -> Result<usize, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map(|n| usize::try_from(n).unwrap_or(0))
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a count is not a number: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
            ))
        })
}

fn decode_node(bytes: &[u8]) -> Result<NodeId, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<NodeId>().ok())
        .ok_or_else(|| StoreError::Corrupt("a node id is not one".into()))
}

fn decode_session_id(bytes: &[u8]) -> Result<SessionId, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<SessionId>().ok())
        .ok_or_else(|| StoreError::Corrupt("a session id is not one".into()))
}

/// One node in the shared registry: which instance holds its link, and what placement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    pub node: NodeId,
    /// The control instance holding the node's link.
    pub holder: String,
    pub region: Option<String>,
    pub capacity: u64,
    pub state: NodeState,
    /// Where other nodes reach its relay endpoint (rooms that span nodes).
    pub relay: Option<RelayAddress>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireEntry {
    v: u8,
    node: String,
    holder: String,
    region: Option<String>,
    capacity: u64,
    state: String,
    /// Absent in entries of instances older than relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relay: Option<WireRelay>,
}

/// A relay address in the registry: the certificate (DER) in base64.
#[derive(Debug, Serialize, Deserialize)]
struct WireRelay {
    addr: std::net::SocketAddr,
    cert: String,
}

pub fn encode_entry(entry: &RegistryEntry) -> String {
    serde_json::to_string(&WireEntry {
        v: VERSION,
        node: entry.node.to_string(),
        holder: entry.holder.clone(),
        region: entry.region.clone(),
        capacity: entry.capacity,
        state: entry.state.as_str().to_string(),
        relay: entry.relay.as_ref().map(|r| WireRelay {
            addr: r.addr,
            cert: BASE64.encode(&r.cert),
        }),
    })
    .unwrap_or_default()
}

pub fn decode_entry(bytes: &[u8]) -> Result<RegistryEntry, StoreError> {
    let wire: WireEntry = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("registry entry: {e}")))?;
    if wire.v != VERSION {
        return Err(StoreError::Corrupt(format!(
            "registry entry version {}",
            wire.v
        )));
    }
    let state = [
        NodeState::Up,
        NodeState::Suspect,
        NodeState::Dead,
        NodeState::Draining,
    ]
    .into_iter()
    .find(|s| s.as_str() == wire.state)
    .ok_or_else(|| StoreError::Corrupt(format!("registry entry state {:?}", wire.state)))?;
    Ok(RegistryEntry {
        node: wire
            .node
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("registry entry node: {e}")))?,
        holder: wire.holder,
        region: wire.region,
        capacity: wire.capacity,
        state,
        relay: wire
            .relay
            .map(|r| {
                BASE64
                    .decode(&r.cert)
                    .map(|cert| RelayAddress { addr: r.addr, cert })
                    .map_err(|e| StoreError::Corrupt(format!("registry entry relay cert: {e}")))
            })
            .transpose()?,
    })
}

/// What one instance asks the instance holding a node's link to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarded {
    /// Carry a node API request to the node.
    Node(NodeRequest),
    /// An admin drained (`true`) or undrained the node through another instance: only the
    /// holder runs the node's health machine. Answered `Done`, or `Error(Stopped)` when the
    /// holder no longer holds the node.
    SetDraining(bool),
}

/// A message on an instance's channel: a request to carry out, or the answer to one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    Request {
        id: u64,
        /// The channel to publish the response on.
        reply: String,
        node: NodeId,
        request: Forwarded,
    },
    Response {
        id: u64,
        response: NodeResponse,
    },
}

pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("forwarded message: {e}")))
}

fn store_error(e: redis::RedisError) -> StoreError {
    match e.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unreachable(e.to_string()),
    }
}

/// Serves node requests forwarded from other instances: (node, request) → response.
pub type ForwardHandler = Arc<
    dyn Fn(NodeId, Forwarded) -> std::pin::Pin<Box<dyn Future<Output = NodeResponse> + Send>>
        + Send
        + Sync,
>;

/// The Redis store; cheap to clone (one connection shared, reconnecting by itself).
#[derive(Debug, Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    /// This control instance's name (random per start) and its channel.
    instance: String,
    health: StoreHealth,
    pending: Mutex<HashMap<u64, oneshot::Sender<NodeResponse>>>,
    next_request: AtomicU64,
    reserve: redis::Script,
    remove: redis::Script,
    roster_put: redis::Script,
    roster_update: redis::Script,
    roster_remove: redis::Script,
    roster_read: redis::Script,
    chair_lease: redis::Script,
    chair_release: redis::Script,
    /// The lease of the roster entries this instance writes, in ms ([`ROSTER_LEASE`]).
    roster_lease_ms: AtomicU64,
    /// This instance's listeners of room events; the relaying task holds it weakly.
    feeds: Arc<Feeds>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `url` (`redis://HOST:PORT[/DB]`). Connects lazily: control starts even while
    /// Redis is down, and every call until it answers is [`StoreError::Unreachable`].
    pub fn open(url: &str, instance: String) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unreachable(format!("bad URL {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(store_error)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                instance,
                health: StoreHealth::default(),
                pending: Mutex::new(HashMap::new()),
                next_request: AtomicU64::new(1),
                reserve: redis::Script::new(RESERVE),
                remove: redis::Script::new(REMOVE),
                roster_put: redis::Script::new(ROSTER_PUT),
                roster_update: redis::Script::new(ROSTER_UPDATE),
                roster_remove: redis::Script::new(ROSTER_REMOVE),
                roster_read: redis::Script::new(ROSTER_READ),
                chair_lease: redis::Script::new(CHAIR_LEASE),
                chair_release: redis::Script::new(CHAIR_RELEASE),
                roster_lease_ms: AtomicU64::new(duration_ms(ROSTER_LEASE)),
                feeds: Arc::default(),
            }),
        })
    }

    /// This control instance's name in the registry.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn health(&self) -> &StoreHealth {
        &self.inner.health
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Note a call's outcome in the health figures and pass it on.
    fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.inner.health.note(&result);
        if let Err(e) = &result {
            tracing::debug!(error = %e, "store call failed");
        }
        result
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let result: Result<String, _> = redis::cmd("PING").query_async(&mut self.conn()).await;
        self.noted(result.map(|_| ()).map_err(store_error))
    }

    pub(super) async fn reserve(
        &self,
        id: SessionId,
        record: SessionRecord,
        caps: Caps,
    ) -> Result<Reservation, ReserveError> {
        let outcome = self.run_reserve(id, &record, caps).await;
        let outcome = self.noted(outcome)?;
        match outcome.as_str() {
            "ok" | "exists" => Ok(Reservation {
                store: self.clone(),
                id,
                record: Some(record),
            }),
            "identity" => Err(CapExceeded::Identity {
                identity: record.identity,
                limit: caps.per_identity,
            }
            .into()),
            "room" => Err(CapExceeded::Room {
                room: record.room,
                limit: caps.per_room,
            }
            .into()),
            "total" => Err(CapExceeded::Node { limit: caps.total }.into()),
            other => Err(StoreError::Corrupt(format!("reserve answered {other:?}")).into()),
        }
    }

    async fn run_reserve(
        &self,
        id: SessionId,
        record: &SessionRecord,
        caps: Caps,
    ) -> Result<String, StoreError> {
        session_script(&self.inner.reserve, id, record)
            .arg(caps.per_identity)
            .arg(caps.per_room)
            .arg(caps.total)
            .invoke_async(&mut self.conn())
            .await
            .map_err(store_error)
    }

    pub(super) async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let result: Result<Option<Vec<u8>>, _> = self.conn().get(session_key(id)).await;
        let result = result
            .map_err(store_error)
            .and_then(|v| v.map(|b| decode_record(&b)).transpose());
        self.noted(result)
    }

    /// Forget `id` (only if it is on `node`, when given).
    pub(super) async fn remove(
        &self,
        id: SessionId,
        node: Option<&NodeId>,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(record) = self.get(id).await? else {
            return Ok(None);
        };
        if node.is_some_and(|n| *n != record.node) {
            return Ok(None);
        }
        let removed: Result<i64, _> = session_script(&self.inner.remove, id, &record)
            .key(tracks_key(id))
            .invoke_async(&mut self.conn())
            .await;
        let removed = self.noted(removed.map_err(store_error))?;
        Ok((removed == 1).then_some(record))
    }

    async fn members(&self, key: String) -> Result<Vec<Vec<u8>>, StoreError> {
        let result: Result<Vec<Vec<u8>>, _> = self.conn().smembers(key).await;
        self.noted(result.map_err(store_error))
    }

    pub(super) async fn node_sessions(&self, node: &NodeId) -> Result<Vec<SessionId>, StoreError> {
        self.members(node_sessions_key(node))
            .await?
            .iter()
            .map(|b| decode_session_id(b))
            .collect()
    }

    pub(super) async fn remove_node(&self, node: &NodeId) -> Result<usize, StoreError> {
        let mut removed = 0;
        for id in self.node_sessions(node).await? {
            if self.remove(id, Some(node)).await?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub(super) async fn reconcile(
        &self,
        node: &NodeId,
        held: &[HeldSession],
    ) -> Result<(usize, usize), StoreError> {
        let holds: HashSet<SessionId> = held.iter().map(|h| h.session).collect();
        let known = self.node_sessions(node).await?;
        let mut forgotten = 0;
        for id in known.iter().filter(|id| !holds.contains(id)) {
            if self.remove(*id, Some(node)).await?.is_some() {
                forgotten += 1;
            }
        }
        let known: HashSet<SessionId> = known.into_iter().collect();
        let mut adopted = 0;
        for h in held.iter().filter(|h| !known.contains(&h.session)) {
            let record = SessionRecord {
                node: node.clone(),
                room: h.room.as_str().to_string(),
                kind: h.kind,
                identity: h.identity.clone(),
                worker: None,
            };
            if self
                .run_reserve(h.session, &record, Caps::default())
                .await?
                == "ok"
            {
                adopted += 1;
            }
        }
        Ok((forgotten, adopted))
    }

    pub(super) async fn track_published(
        &self,
        node: &NodeId,
        track: TrackInfo,
    ) -> Result<(), StoreError> {
        let session = track.track.session;
        if self.get(session).await?.is_none_or(|r| r.node != *node) {
            return Ok(());
        }
        let json = serde_json::to_string(&track).unwrap_or_default();
        let result: Result<(), _> = self
            .conn()
            .hset(tracks_key(session), track.track.to_string(), json)
            .await;
        self.noted(result.map_err(store_error))
    }

    pub(super) async fn track_unpublished(
        &self,
        node: &NodeId,
        track: TrackId,
    ) -> Result<(), StoreError> {
        if self
            .get(track.session)
            .await?
            .is_none_or(|r| r.node != *node)
        {
            return Ok(());
        }
        let result: Result<(), _> = self
            .conn()
            .hdel(tracks_key(track.session), track.to_string())
            .await;
        self.noted(result.map_err(store_error))
    }

    pub(super) async fn room(
        &self,
        room: &str,
    ) -> Result<(Vec<(SessionId, SessionRecord)>, Vec<TrackInfo>), StoreError> {
        let mut sessions = Vec::new();
        let mut tracks = Vec::new();
        let mut ids: Vec<SessionId> = self
            .members(room_sessions_key(room))
            .await?
            .iter()
            .map(|b| decode_session_id(b))
            .collect::<Result<_, _>>()?;
        ids.sort();
        for id in ids {
            let Some(record) = self.get(id).await? else {
                continue;
            };
            let values: Result<Vec<Vec<u8>>, _> = self.conn().hvals(tracks_key(id)).await;
            for value in self.noted(values.map_err(store_error))? {
                tracks.push(
                    serde_json::from_slice::<TrackInfo>(&value)
                        .map_err(|e| StoreError::Corrupt(format!("track: {e}")))?,
                );
            }
            sessions.push((id, record));
        }
        Ok((sessions, tracks))
    }

    async fn counts(&self, key: String) -> Result<Vec<(NodeId, usize)>, StoreError> {
        let result: Result<Vec<(Vec<u8>, Vec<u8>)>, _> = self.conn().hgetall(key).await;
        self.noted(result.map_err(store_error))?
            .iter()
            .map(|(node, count)| Ok((decode_node(node)?, decode_count(count)?)))
            .collect()
    }

    pub(super) async fn placement_view(&self, room: &str) -> Result<PlacementView, StoreError> {
        let room_nodes = if room.is_empty() {
            Vec::new()
        } else {
            self.counts(room_nodes_key(room)).await?
        };
        let node_counts = self
            .counts(COUNT_NODE.to_string())
            .await?
            .into_iter()
            .collect();
        Ok(PlacementView {
            room_nodes,
            node_counts,
        })
    }

    pub(super) async fn rooms(&self) -> Result<Vec<(String, Vec<NodeId>)>, StoreError> {
        let mut rooms = Vec::new();
        for room in self.members(ROOMS.to_string()).await? {
            let room = String::from_utf8(room)
                .map_err(|_| StoreError::Corrupt("a room name is not UTF-8".into()))?;
            let mut nodes: Vec<NodeId> = self
                .counts(room_nodes_key(&room))
                .await?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            if nodes.is_empty() {
                continue;
            }
            nodes.sort();
            rooms.push((room, nodes));
        }
        rooms.sort();
        Ok(rooms)
    }

    pub(super) async fn total(&self) -> Result<usize, StoreError> {
        let result: Result<Option<Vec<u8>>, _> = self.conn().get(COUNT_TOTAL).await;
        let result = result
            .map_err(store_error)
            .and_then(|v| v.map_or(Ok(0), |b| decode_count(&b)));
        self.noted(result)
    }

    /// Announce the nodes this instance holds, each for `ttl` (refresh well before it ends).
    pub async fn publish_nodes(
        &self,
        entries: &[RegistryEntry],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return self.ping().await;
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            let id = entry.node.to_string();
            pipe.cmd("SET")
                .arg(node_info_key(&id))
                .arg(encode_entry(entry))
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore()
                .sadd(REGISTRY, &id)
                .ignore();
        }
        let result: Result<(), _> = pipe.query_async(&mut self.conn()).await;
        self.noted(result.map_err(store_error))
    }

    /// Every node some instance announced and whose announcement has not expired. Entries
    /// that cannot be read are skipped (and logged): one bad value must not hide the others.
    pub async fn registry(&self) -> Result<Vec<RegistryEntry>, StoreError> {
        let ids = self.members(REGISTRY.to_string()).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| node_info_key(&String::from_utf8_lossy(id)))
            .collect();
        let values: Result<Vec<Option<Vec<u8>>>, _> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await;
        let values = self.noted(values.map_err(store_error))?;
        let mut entries = Vec::new();
        let mut expired = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.map(|v| decode_entry(&v)) {
                Some(Ok(entry)) => entries.push(entry),
                Some(Err(e)) => {
                    self.inner.health.note::<()>(&Err(e.clone()));
                    tracing::warn!(error = %e, "skipping a node registry entry");
                }
                None => expired.push(id.clone()),
            }
        }
        if !expired.is_empty() {
            let result: Result<(), _> = self.conn().srem(REGISTRY, expired).await;
            self.noted(result.map_err(store_error))?;
        }
        Ok(entries)
    }

    /// Carry `request` for `node` to the instance `holder` that holds its link, and wait up
    /// to `timeout` for the answer. Failures come back as `NodeError::Stopped`, as from a
    /// lost link.
    pub async fn forward(
        &self,
        holder: &str,
        node: &NodeId,
        request: Forwarded,
        timeout: Duration,
    ) -> NodeResponse {
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        let envelope = Envelope::Request {
            id,
            reply: instance_channel(&self.inner.instance),
            node: node.clone(),
            request,
        };
        let sent = self.publish(&instance_channel(holder), &envelope).await;
        let response = match sent {
            Ok(0) => {
                tracing::warn!(%node, holder, "no control instance listens on the node holder's channel");
                None
            }
            Ok(_) => tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(e) => {
                tracing::warn!(%node, holder, error = %e, "cannot forward a node request");
                None
            }
        };
        self.lock_pending().remove(&id);
        response.unwrap_or(NodeResponse::Error(NodeError::Stopped))
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<NodeResponse>>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn publish(&self, channel: &str, envelope: &Envelope) -> Result<usize, StoreError> {
        let payload = serde_json::to_vec(envelope).unwrap_or_default();
        let result: Result<usize, _> = self.conn().publish(channel, payload).await;
        self.noted(result.map_err(store_error))
    }

    /// Listen on this instance's channel until the process ends: requests forwarded by other
    /// instances go to `handler` and are answered on their reply channel; answers to this
    /// instance's forwards go to their waiting callers. Reconnects by itself.
    pub async fn serve_forwarded(self, handler: ForwardHandler) {
        let channel = instance_channel(&self.inner.instance);
        loop {
            let pubsub = match self.inner.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => Some(pubsub),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot subscribe to the instance channel");
                        None
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open a pub/sub connection");
                    None
                }
            };
            let Some(pubsub) = pubsub else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            tracing::info!(%channel, "listening for forwarded node requests");
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                match decode_envelope(message.get_payload_bytes()) {
                    Ok(Envelope::Request {
                        id,
                        reply,
                        node,
                        request,
                    }) => {
                        let (store, handler) = (self.clone(), handler.clone());
                        tokio::spawn(async move {
                            let response = handler(node, request).await;
                            let _ = store
                                .publish(&reply, &Envelope::Response { id, response })
                                .await;
                        });
                    }
                    Ok(Envelope::Response { id, response }) => {
                        if let Some(tx) = self.lock_pending().remove(&id) {
                            let _ = tx.send(response);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping a message on the instance channel")
                    }
                }
            }
            tracing::warn!(%channel, "pub/sub connection lost; reconnecting");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Meeting rooms: rosters and event feeds (see [`rooms`](super::rooms) for the semantics,
/// which are those of the in-memory store, plus leases).
impl RedisStore {
    /// Lease the roster entries this instance writes from now on for `lease` instead of
    /// [`ROSTER_LEASE`] (tests).
    pub fn set_roster_lease(&self, lease: Duration) {
        self.inner
            .roster_lease_ms
            .store(duration_ms(lease), Ordering::Relaxed);
    }

    /// A roster script invoked with the arguments every roster script takes.
    fn roster_script<'a>(
        &self,
        script: &'a redis::Script,
        room: &str,
        identity: &str,
        pid: &str,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(roster_key(room))
            .arg(VERSION)
            .arg(self.inner.roster_lease_ms.load(Ordering::Relaxed))
            .arg(identity)
            .arg(pid);
        invocation
    }

    /// Put `entry` in `room`'s roster, replacing the same identity's entry, unless the room
    /// already holds `max` other identities with unexpired entries (0: no limit). The entry
    /// is leased: renew it with [`roster_update`](Self::roster_update).
    pub async fn roster_put(
        &self,
        room: &str,
        entry: RosterEntry,
        max: usize,
    ) -> Result<RosterJoin, StoreError> {
        let result: Result<String, _> = self
            .roster_script(&self.inner.roster_put, room, &entry.identity, &entry.pid)
            .arg(&entry.data)
            .arg(max)
            .invoke_async(&mut self.conn())
            .await;
        let result = result
            .map_err(store_error)
            .and_then(|outcome| match outcome.as_str() {
                "joined" => Ok(RosterJoin::Joined),
                "full" => Ok(RosterJoin::Full),
                "corrupt" => Err(StoreError::Corrupt(format!(
                    "an entry of room {room:?}'s roster"
                ))),
                other => Err(StoreError::Corrupt(format!(
                    "roster put answered {other:?}"
                ))),
            });
        self.noted(result)
    }

    /// Replace the data of `identity`'s entry and renew its lease if join `pid` still owns
    /// it. `Ok(false)`: no such entry, another join owns it, or its lease ran out (it is then
    /// gone; put it again).
    pub async fn roster_update(
        &self,
        room: &str,
        identity: &str,
        pid: &str,
        data: &str,
    ) -> Result<bool, StoreError> {
        let result: Result<i64, _> = self
            .roster_script(&self.inner.roster_update, room, identity, pid)
            .arg(data)
            .invoke_async(&mut self.conn())
            .await;
        self.noted(owned(result, room, identity))
    }

    /// Remove `identity`'s entry if join `pid` still owns it (even if its lease ran out).
    /// Returns whether it did.
    pub async fn roster_remove(
        &self,
        room: &str,
        identity: &str,
        pid: &str,
    ) -> Result<bool, StoreError> {
        let result: Result<i64, _> = self
            .roster_script(&self.inner.roster_remove, room, identity, pid)
            .invoke_async(&mut self.conn())
            .await;
        self.noted(owned(result, room, identity))
    }

    /// `room`'s roster ordered by identity, without the entries whose lease ran out (those
    /// are deleted).
    pub async fn roster(&self, room: &str) -> Result<Vec<RosterEntry>, StoreError> {
        let result: Result<Vec<Vec<u8>>, _> = self
            .roster_script(&self.inner.roster_read, room, "", "")
            .invoke_async(&mut self.conn())
            .await;
        let result = result.map_err(store_error).and_then(|flat| {
            let mut entries = flat
                .chunks(2)
                .map(|pair| match pair {
                    [identity, value] => decode_roster_entry(identity, value),
                    _ => Err(StoreError::Corrupt(
                        "roster read answered an odd list".into(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            entries.sort_by(|a, b| a.identity.cmp(&b.identity));
            Ok(entries)
        });
        self.noted(result)
    }

    /// `room`'s value `name`, if set.
    pub async fn room_value(&self, room: &str, name: &str) -> Result<Option<String>, StoreError> {
        let result: Result<Option<String>, _> = self.conn().get(value_key(room, name)).await;
        self.noted(result.map_err(store_error))
    }

    /// Set (or with `None` remove) `room`'s value `name`.
    pub async fn set_room_value(
        &self,
        room: &str,
        name: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        let result: Result<(), _> = match value {
            Some(v) => self.conn().set(value_key(room, name), v).await,
            None => self.conn().del(value_key(room, name)).await,
        };
        self.noted(result.map_err(store_error))
    }

    /// Take or renew `room`'s chair lease for `holder` for `ttl`; `false` while another
    /// holder's lease runs.
    pub async fn chair_lease(
        &self,
        room: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let result: Result<i64, _> = self
            .inner
            .chair_lease
            .key(chair_key(room))
            .arg(holder)
            .arg(duration_ms(ttl))
            .invoke_async(&mut self.conn())
            .await;
        self.noted(result.map(|r| r == 1).map_err(store_error))
    }

    /// Give up `room`'s chair lease if `holder` has it.
    pub async fn chair_release(&self, room: &str, holder: &str) -> Result<(), StoreError> {
        let result: Result<i64, _> = self
            .inner
            .chair_release
            .key(chair_key(room))
            .arg(holder)
            .invoke_async(&mut self.conn())
            .await;
        self.noted(result.map(|_| ()).map_err(store_error))
    }

    /// Send `message` to every listener of `room`, on every control instance (this one's
    /// included, through Redis).
    pub async fn room_publish(&self, room: &str, message: &str) -> Result<(), StoreError> {
        let result: Result<usize, _> = self.conn().publish(room_channel(room), message).await;
        self.noted(result.map(|_| ()).map_err(store_error))
    }

    /// Listen to `room`'s events from now on, this instance's and every other's. Cheap and
    /// synchronous: the first listener of a room asks this instance's relaying task (started
    /// on the first call; needs a tokio runtime) to subscribe to the room's channel, which
    /// takes effect shortly after, not before this returns. The task unsubscribes once the
    /// room's last listener is dropped.
    pub fn room_subscribe(&self, room: &str) -> RoomFeed {
        let feeds = &self.inner.feeds;
        let (receiver, first) = {
            let mut senders = feeds.lock();
            match senders.get(room) {
                Some(sender) if sender.receiver_count() > 0 => (sender.subscribe(), false),
                _ => {
                    let (sender, receiver) = broadcast::channel(FEED_CAPACITY);
                    senders.insert(room.to_string(), sender);
                    (receiver, true)
                }
            }
        };
        if !feeds.started.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(relay_rooms(
                        self.inner.client.clone(),
                        Arc::downgrade(feeds),
                    ));
                }
                Err(_) => {
                    feeds.started.store(false, Ordering::Release);
                    tracing::error!(room, "room events need a tokio runtime; none runs here");
                }
            }
        }
        if first {
            feeds.changed.notify_one();
        }
        receiver
    }
}

/// What an owner-checking roster script answered.
fn owned(
    result: Result<i64, redis::RedisError>,
    room: &str,
    identity: &str,
) -> Result<bool, StoreError> {
    match result.map_err(store_error)? {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(StoreError::Corrupt(format!(
            "the roster entry of {identity:?} in room {room:?}"
        ))),
    }
}

/// One control instance's local listeners of room events, by room.
#[derive(Debug, Default)]
struct Feeds {
    senders: Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>,
    /// A room got its first listener: the relaying task subscribes without waiting for its
    /// next round.
    changed: Notify,
    /// Whether the relaying task was started.
    started: AtomicBool,
}

impl Feeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Arc<str>>>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget the rooms nobody listens to any more; the rooms somebody listens to.
    fn listened(&self) -> HashSet<String> {
        let mut senders = self.lock();
        senders.retain(|_, sender| sender.receiver_count() > 0);
        senders.keys().cloned().collect()
    }

    /// Hand a message from Redis to the listeners of its room, if any.
    fn deliver(&self, message: &redis::Msg) {
        let Some(room) = channel_room(message.get_channel_name()) else {
            return;
        };
        let Ok(text) = std::str::from_utf8(message.get_payload_bytes()) else {
            tracing::warn!(room, "dropping a room event that is not UTF-8");
            return;
        };
        if let Some(sender) = self.lock().get(room) {
            // An error means nobody listens any more: the next round unsubscribes.
            let _ = sender.send(Arc::from(text));
        }
    }
}

/// How often the relaying task drops the rooms nobody listens to any more.
const RELAY_ROUND: Duration = Duration::from_secs(1);
/// How often (in rounds) it pings Redis, to notice a connection that died silently.
const RELAY_PING_ROUNDS: u32 = 10;
/// How long a (un)subscribe or ping on the pub/sub connection may take.
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Relay the events of the rooms this instance listens to from Redis to their local
/// listeners, over one pub/sub connection, until the store is dropped: subscribe to a room's
/// channel when it gets its first listener, unsubscribe when its last one is gone.
/// Reconnects by itself (subscribing again to every room listened to); events published
/// while disconnected are lost (listeners resynchronise from the roster).
async fn relay_rooms(client: redis::Client, feeds: Weak<Feeds>) {
    loop {
        if feeds.strong_count() == 0 {
            return;
        }
        let pubsub = match tokio::time::timeout(RELAY_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Some(pubsub),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot open a pub/sub connection for room events");
                None
            }
            Err(_) => {
                tracing::debug!("timed out opening a pub/sub connection for room events");
                None
            }
        };
        let Some(pubsub) = pubsub else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        tracing::info!("listening for room events");
        let (mut sink, mut messages) = pubsub.split();
        let mut subscribed = HashSet::new();
        let mut ticker = tokio::time::interval(RELAY_ROUND);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = 0u32;
        let mut dirty = true;
        let lost = loop {
            let Some(feeds) = feeds.upgrade() else {
                return;
            };
            if dirty {
                dirty = false;
                if let Err(e) = follow(&feeds.listened(), &mut sink, &mut subscribed).await {
                    break e;
                }
            }
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => feeds.deliver(&message),
                    None => break "the connection closed".to_string(),
                },
                () = feeds.changed.notified() => dirty = true,
                _ = ticker.tick() => {
                    dirty = true;
                    rounds = rounds.wrapping_add(1);
                    if rounds % RELAY_PING_ROUNDS == 0 {
                        let pong = sink.ping::<redis::Value>();
                        match tokio::time::timeout(RELAY_TIMEOUT, pong).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => break e.to_string(),
                            Err(_) => break "ping timed out".to_string(),
                        }
                    }
                }
            }
        };
        tracing::warn!(
            error = %lost,
            rooms = subscribed.len(),
            "room events' pub/sub connection lost; reconnecting"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Subscribe to the channels of the rooms in `wanted` not yet in `subscribed`, unsubscribe
/// from those no longer wanted; `subscribed` follows.
async fn follow(
    wanted: &HashSet<String>,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<String>,
) -> Result<(), String> {
    let join: Vec<String> = wanted.difference(subscribed).cloned().collect();
    if !join.is_empty() {
        let channels: Vec<String> = join.iter().map(|room| room_channel(room)).collect();
        relay_call(sink.subscribe(channels)).await?;
        subscribed.extend(join);
    }
    let leave: Vec<String> = subscribed.difference(wanted).cloned().collect();
    if !leave.is_empty() {
        let channels: Vec<String> = leave.iter().map(|room| room_channel(room)).collect();
        relay_call(sink.unsubscribe(channels)).await?;
        for room in &leave {
            subscribed.remove(room);
        }
    }
    Ok(())
}

async fn relay_call(call: impl Future<Output = redis::RedisResult<()>>) -> Result<(), String> {
    match tokio::time::timeout(RELAY_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("a pub/sub command timed out".into()),
    }
}

/// A session reserved in Redis; released (in a task) when dropped uncommitted.
#[derive(Debug)]
pub struct Reservation {
    store: RedisStore,
    id: SessionId,
    /// `None` once committed.
    record: Option<SessionRecord>,
}

impl Reservation {
    pub(super) async fn commit(mut self, worker: WorkerId) -> bool {
        let Some(mut record) = self.record.take() else {
            return false;
        };
        record.worker = Some(worker);
        // XX: only if the record is still there (the node may have ended it already).
        let result: Result<Option<String>, _> = redis::cmd("SET")
            .arg(session_key(self.id))
            .arg(encode_record(&record))
            .arg("XX")
            .query_async(&mut self.store.conn())
            .await;
        matches!(self.store.noted(result.map_err(store_error)), Ok(Some(_)))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.record.take().is_some() {
            let (store, id) = (self.store.clone(), self.id);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = store.remove(id, None).await {
                        tracing::warn!(session = %id, error = %e, "cannot release a reservation");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> SessionRecord {
        SessionRecord {
            node: "n1".parse().expect("node id"),
            room: "room-1".into(),
            kind: SessionKind::Subscribe,
            identity: "alice \"|\" ✓".into(),
            worker: Some(WorkerId(3)),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        assert_eq!(
            decode_record(encode_record(&record()).as_bytes()),
            Ok(record())
        );
    }

    #[test]
    fn another_version_or_a_bad_node_is_an_error() {
        let text = encode_record(&record()).replace("\"v\":1", "\"v\":9");
        assert!(matches!(
            decode_record(text.as_bytes()),
            Err(StoreError::Corrupt(_))
        ));
        let text = encode_record(&record()).replace("\"n1\"", "\"bad node id!\"");
        assert!(matches!(
            decode_record(text.as_bytes()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(decode_count(b"12x").is_err());
        assert_eq!(decode_count(b"-3"), Ok(0));
        assert_eq!(decode_count(b"42"), Ok(42));
    }

    #[test]
    fn a_registry_entry_reads_back_as_written() {
        let entry = RegistryEntry {
            node: "n2".parse().expect("node id"),
            holder: "abc".into(),
            region: Some("eu".into()),
            capacity: 100,
            state: NodeState::Draining,
            relay: None,
        };
        assert_eq!(decode_entry(encode_entry(&entry).as_bytes()), Ok(entry));
        let relaying = RegistryEntry {
            relay: Some(RelayAddress {
                addr: "10.0.0.2:7402".parse().expect("address"),
                cert: vec![0x30, 0x82, 0, 255],
            }),
            ..entry_of("n3")
        };
        assert_eq!(
            decode_entry(encode_entry(&relaying).as_bytes()),
            Ok(relaying)
        );
        // An entry of an instance older than relays has no `relay`.
        let old = r#"{"v":1,"node":"n4","holder":"x","region":null,"capacity":1,"state":"up"}"#
            .replace("\"v\":1", &format!("\"v\":{VERSION}"));
        assert_eq!(decode_entry(old.as_bytes()).map(|e| e.relay), Ok(None));
    }

    fn entry_of(node: &str) -> RegistryEntry {
        RegistryEntry {
            node: node.parse().expect("node id"),
            holder: "abc".into(),
            region: None,
            capacity: 1,
            state: NodeState::Up,
            relay: None,
        }
    }

    #[test]
    fn a_roster_entry_reads_back_as_the_scripts_write_it() {
        // As Lua's cjson writes it: keys in any order, `/` escaped.
        let value = format!(
            r#"{{"pid":"p1","expires_ms":1712345678901,"data":"{{\"a\":\"x\/y ✓\"}}","v":{VERSION}}}"#
        );
        assert_eq!(
            decode_roster_entry("alice".as_bytes(), value.as_bytes()),
            Ok(RosterEntry {
                identity: "alice".into(),
                pid: "p1".into(),
                data: r#"{"a":"x/y ✓"}"#.into(),
            })
        );
        let other = value.replace(&format!("\"v\":{VERSION}"), "\"v\":9");
        assert!(matches!(
            decode_roster_entry(b"alice", other.as_bytes()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_roster_entry(&[0xff], value.as_bytes()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_room_channel_names_its_room() {
        for room in ["r", "a:b:events", ""] {
            assert_eq!(channel_room(&room_channel(room)), Some(room));
        }
        assert_eq!(channel_room(&instance_channel("x")), None);
        assert_eq!(roster_key("r"), "sfu:rtc:r:roster");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(&bytes);
            let _ = decode_entry(&bytes);
            let _ = decode_envelope(&bytes);
            let _ = decode_count(&bytes);
            let _ = decode_node(&bytes);
            let _ = decode_session_id(&bytes);
            let _ = decode_roster_entry(&bytes, &bytes);
        }

        #[test]
        fn mangled_records_never_panic(cut in 0usize..200, byte in any::<u8>()) {
            let mut bytes = encode_record(&record()).into_bytes();
            let at = cut.min(bytes.len().saturating_sub(1));
            bytes[at] = byte;
            let _ = decode_record(&bytes);
            bytes.truncate(cut);
            let _ = decode_record(&bytes);
        }
    }
}
