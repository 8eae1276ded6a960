//! Control's record of the sessions it created — which node, room and kind, whose token — and
//! the counts the session caps and placement read: sessions per room, identity and node, and
//! the nodes each room lives on. A session is recorded from the moment control sends its offer
//! to a node (so an end the node reports at once is never missed) until the client deletes it
//! or the node reports that it ended.
//!
//! Two backends: [`memory`] (one control instance, the default) and [`redis`] (`[store]
//! redis_url`: several control instances share the index, the counts and the node registry).
//! [`Store`] is an enum over the two rather than a trait object: every call is async for
//! Redis, `async fn` in a trait is not object-safe (each call would box its future), and the
//! set of backends is closed. Nothing of the Redis client leaks past this module.

pub mod memory;
pub mod redis;
pub mod rooms;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sfu_core::SessionKind;
use sfu_core::ids::{NodeId, SessionId, TrackId, WorkerId};
use sfu_core::proto::{HeldSession, TrackInfo};

pub use memory::SessionStore;
pub use rooms::{RoomFeed, RosterEntry, RosterJoin};

/// One session as control knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub node: NodeId,
    pub room: String,
    pub kind: SessionKind,
    pub identity: String,
    /// The worker the node put it on; `None` while the node is still answering the offer.
    pub worker: Option<WorkerId>,
}

/// Session caps (`[limits]`); 0 means no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub per_identity: usize,
    pub per_room: usize,
    pub total: usize,
}

/// Which cap a new session would exceed. The message names the cap's configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapExceeded {
    #[error(
        "identity {identity:?} already has {limit} sessions, the most one identity may hold \
         (limits.max_sessions_per_identity); end one first"
    )]
    Identity { identity: String, limit: usize },
    #[error("room {room:?} is full: it has {limit} sessions (limits.max_sessions_per_room)")]
    Room { room: String, limit: usize },
    #[error(
        "this server is at its session limit of {limit} (limits.max_sessions); try again later \
         or another server"
    )]
    Node { limit: usize },
}

/// The shared store failed. Only the Redis backend fails; the message says which setting
/// points at it, for the operator reading a 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the state store is unreachable (store.redis_url): {0}")]
    Unreachable(String),
    /// A value in the store that control did not write, or wrote with another version.
    #[error("the state store holds a value control cannot read (store.redis_url): {0}")]
    Corrupt(String),
}

/// Why a session could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error(transparent)]
    Cap(#[from] CapExceeded),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What placement reads for one room: where its sessions are, and how loaded each node is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementView {
    /// The nodes holding sessions of the room, with how many each.
    pub room_nodes: Vec<(NodeId, usize)>,
    /// Sessions and reservations per node.
    pub node_counts: HashMap<NodeId, usize>,
}

/// The session store: in memory, or shared through Redis.
#[derive(Debug)]
// One `Store` per process, never moved after start: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Memory(SessionStore),
    Redis(redis::RedisStore),
}

impl Default for Store {
    fn default() -> Self {
        Store::Memory(SessionStore::default())
    }
}

/// The store's health for `/metrics`: errors so far, and whether its last call answered.
#[derive(Debug)]
pub struct StoreHealth {
    errors: AtomicU64,
    up: AtomicBool,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self {
            errors: AtomicU64::new(0),
            up: AtomicBool::new(true),
        }
    }
}

impl StoreHealth {
    /// Note a call's outcome.
    pub fn note<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.up.store(true, Ordering::Relaxed),
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.up.store(false, Ordering::Relaxed);
            }
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

impl Store {
    /// Whether several control instances share this store.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// The Redis backend, for the node registry and forwarding.
    pub fn redis(&self) -> Option<&redis::RedisStore> {
        match self {
            Store::Redis(r) => Some(r),
            Store::Memory(_) => None,
        }
    }

    /// Errors so far and whether the store answers (always up in memory).
    pub fn health(&self) -> (u64, bool) {
        match self {
            Store::Memory(_) => (0, true),
            Store::Redis(r) => (r.health().errors(), r.health().up()),
        }
    }

    /// Whether the store answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.ping().await,
        }
    }

    /// Record session `id` of `identity` in `room` on `node` while the node answers its
    /// offer, or say which cap it would exceed. The session counts against the caps from here
    /// on, so concurrent offers cannot overshoot a cap (in Redis, the check and the count are
    /// one script); dropping the reservation without [committing](Reservation::commit) it
    /// (the node refused, the client went away) removes it again.
    pub async fn reserve(
        &self,
        id: SessionId,
        node: &NodeId,
        room: &str,
        kind: SessionKind,
        identity: &str,
        caps: Caps,
    ) -> Result<Reservation<'_>, ReserveError> {
        match self {
            Store::Memory(m) => Ok(Reservation::Memory(
                m.reserve(id, node, room, kind, identity, caps)?,
            )),
            Store::Redis(r) => {
                let record = SessionRecord {
                    node: node.clone(),
                    room: room.to_string(),
                    kind,
                    identity: identity.to_string(),
                    worker: None,
                };
                Ok(Reservation::Redis(r.reserve(id, record, caps).await?))
            }
        }
    }

    pub async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.get(id)),
            Store::Redis(r) => r.get(id).await,
        }
    }

    /// Forget a session and release its place in the counts.
    pub async fn remove(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.remove(id)),
            Store::Redis(r) => r.remove(id, None).await,
        }
    }

    /// Forget a session `node` says it ended. A node can only end its own sessions.
    pub async fn remove_ended(
        &self,
        node: &NodeId,
        id: SessionId,
    ) -> Result<Option<SessionRecord>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.remove_ended(node, id)),
            Store::Redis(r) => r.remove(id, Some(node)).await,
        }
    }

    /// The sessions recorded on `node`.
    pub async fn node_sessions(&self, node: &NodeId) -> Result<Vec<SessionId>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.node_sessions(node)),
            Store::Redis(r) => r.node_sessions(node).await,
        }
    }

    /// Forget every session on `node` (it stopped); returns how many.
    pub async fn remove_node(&self, node: &NodeId) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.remove_node(node)),
            Store::Redis(r) => r.remove_node(node).await,
        }
    }

    /// Make the record of `node` what the node says it holds (it registered again): forget
    /// what it no longer has, adopt what was not known. Returns (forgotten, adopted).
    pub async fn reconcile(
        &self,
        node: &NodeId,
        held: &[HeldSession],
    ) -> Result<(usize, usize), StoreError> {
        match self {
            Store::Memory(m) => Ok(m.reconcile(node, held)),
            Store::Redis(r) => r.reconcile(node, held).await,
        }
    }

    /// A node says a session published a track.
    pub async fn track_published(&self, node: &NodeId, track: TrackInfo) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.track_published(node, track);
                Ok(())
            }
            Store::Redis(r) => r.track_published(node, track).await,
        }
    }

    /// A node says a track ended.
    pub async fn track_unpublished(&self, node: &NodeId, track: TrackId) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.track_unpublished(node, track);
                Ok(())
            }
            Store::Redis(r) => r.track_unpublished(node, track).await,
        }
    }

    /// The sessions of `room` and the tracks they publish.
    pub async fn room(
        &self,
        room: &str,
    ) -> Result<(Vec<(SessionId, SessionRecord)>, Vec<TrackInfo>), StoreError> {
        match self {
            Store::Memory(m) => Ok(m.room(room)),
            Store::Redis(r) => r.room(room).await,
        }
    }

    /// What placement needs to know for a new session of `room`.
    pub async fn placement_view(&self, room: &str) -> Result<PlacementView, StoreError> {
        match self {
            Store::Memory(m) => Ok(PlacementView {
                room_nodes: m.room_nodes(room),
                node_counts: m.node_counts(),
            }),
            Store::Redis(r) => r.placement_view(room).await,
        }
    }

    /// Sessions and reservations per node.
    pub async fn node_counts(&self) -> Result<HashMap<NodeId, usize>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.node_counts()),
            Store::Redis(r) => Ok(r.placement_view("").await?.node_counts),
        }
    }

    /// Rooms and the nodes they are on.
    pub async fn rooms(&self) -> Result<Vec<(String, Vec<NodeId>)>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.rooms()),
            Store::Redis(r) => r.rooms().await,
        }
    }

    /// Sessions recorded, those being answered included.
    pub async fn session_count(&self) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.len()),
            Store::Redis(r) => r.total().await,
        }
    }
}

/// Meeting rooms: rosters and event feeds ([`rooms`]).
impl Store {
    /// Put `entry` in `room`'s roster (replacing the same identity's entry), unless the room
    /// holds `max` other identities already (0: no limit).
    pub async fn roster_put(
        &self,
        room: &str,
        entry: RosterEntry,
        max: usize,
    ) -> Result<RosterJoin, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.rooms.roster_put(room, entry, max)),
            Store::Redis(r) => r.roster_put(room, entry, max).await,
        }
    }

    /// Replace the data of `identity`'s roster entry if join `pid` still owns it (in Redis,
    /// also renews the entry's lease). `Ok(false)`: another join owns it now, or (Redis) the
    /// entry is gone: its lease ran out, or Redis restarted without it.
    pub async fn roster_update(
        &self,
        room: &str,
        identity: &str,
        pid: &str,
        data: &str,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.rooms.roster_update(room, identity, pid, data)),
            Store::Redis(r) => r.roster_update(room, identity, pid, data).await,
        }
    }

    /// Remove `identity`'s roster entry if join `pid` still owns it.
    pub async fn roster_remove(
        &self,
        room: &str,
        identity: &str,
        pid: &str,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.rooms.roster_remove(room, identity, pid)),
            Store::Redis(r) => r.roster_remove(room, identity, pid).await,
        }
    }

    /// `room`'s roster, ordered by identity (in Redis, without entries whose lease expired).
    pub async fn roster(&self, room: &str) -> Result<Vec<RosterEntry>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.rooms.roster(room)),
            Store::Redis(r) => r.roster(room).await,
        }
    }

    /// Send `message` to every listener of `room`, on every control instance.
    pub async fn room_publish(&self, room: &str, message: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.rooms.publish(room, message);
                Ok(())
            }
            Store::Redis(r) => r.room_publish(room, message).await,
        }
    }

    /// `room`'s value `name` (JSON: its `settings`, its media `mode`), if set.
    pub async fn room_value(&self, room: &str, name: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.rooms.value(room, name)),
            Store::Redis(r) => r.room_value(room, name).await,
        }
    }

    /// Set (or with `None` remove) `room`'s value `name`.
    pub async fn set_room_value(
        &self,
        room: &str,
        name: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.rooms.set_value(room, name, value);
                Ok(())
            }
            Store::Redis(r) => r.set_room_value(room, name, value).await,
        }
    }

    /// Take or renew `room`'s chair lease ([`crate::rtc::chair`]) for `holder` for `ttl`:
    /// `false` while another holder's lease runs.
    pub async fn chair_lease(
        &self,
        room: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => {
                Ok(m.rooms
                    .chair_lease(room, holder, ttl, std::time::Instant::now()))
            }
            Store::Redis(r) => r.chair_lease(room, holder, ttl).await,
        }
    }

    /// Give up `room`'s chair lease if `holder` has it.
    pub async fn chair_release(&self, room: &str, holder: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.rooms.chair_release(room, holder);
                Ok(())
            }
            Store::Redis(r) => r.chair_release(room, holder).await,
        }
    }

    /// Listen to `room`'s events from now on (this instance's and every other's).
    pub fn room_subscribe(&self, room: &str) -> RoomFeed {
        match self {
            Store::Memory(m) => m.rooms.subscribe(room),
            Store::Redis(r) => r.room_subscribe(room),
        }
    }
}

/// A session recorded by [`Store::reserve`]; removed on drop unless committed.
#[derive(Debug)]
pub enum Reservation<'a> {
    Memory(memory::Reservation<'a>),
    Redis(redis::Reservation),
}

impl Reservation<'_> {
    /// The node created the session on `worker`. Returns `false` if the node already reported
    /// it ended (it is then no longer recorded) or the store could not be told.
    pub async fn commit(self, worker: WorkerId) -> bool {
        match self {
            Reservation::Memory(m) => m.commit(worker),
            Reservation::Redis(r) => r.commit(worker).await,
        }
    }
}
