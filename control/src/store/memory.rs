//! The in-memory backend of the [store](super): one control instance's sessions, counts and
//! tracks behind one mutex. The embedded default; nothing to install.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sfu_core::SessionKind;
use sfu_core::ids::TrackId;
use sfu_core::ids::{NodeId, SessionId, WorkerId};
use sfu_core::proto::{HeldSession, TrackInfo};

use super::{CapExceeded, Caps, SessionRecord};

/// Sessions by id, with live counts per room, per identity and in total. A mutex is fine: this
/// is touched once per signaling request, and every operation is O(1).
#[derive(Debug, Default)]
pub struct SessionStore {
    inner: Mutex<Inner>,
    /// Meeting rooms' rosters and event feeds.
    pub rooms: super::rooms::MemoryRooms,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionId, SessionRecord>,
    /// Sessions and outstanding reservations per room / identity / in total. Entries at zero
    /// are removed, so the maps hold only rooms and identities with sessions.
    by_room: HashMap<String, usize>,
    by_identity: HashMap<String, usize>,
    /// Per room, its sessions on each node (placement keeps a room where it lives).
    room_nodes: HashMap<String, HashMap<NodeId, usize>>,
    per_node: HashMap<NodeId, usize>,
    /// Tracks the sessions published, as their nodes reported them.
    tracks: HashMap<SessionId, Vec<TrackInfo>>,
    total: usize,
}

impl Inner {
    fn count(&mut self, record: &SessionRecord) {
        *self.by_room.entry(record.room.clone()).or_default() += 1;
        *self.by_identity.entry(record.identity.clone()).or_default() += 1;
        *self
            .room_nodes
            .entry(record.room.clone())
            .or_default()
            .entry(record.node.clone())
            .or_default() += 1;
        *self.per_node.entry(record.node.clone()).or_default() += 1;
        self.total += 1;
    }

    fn uncount(&mut self, record: &SessionRecord) {
        decrement(&mut self.by_room, &record.room);
        decrement(&mut self.by_identity, &record.identity);
        if let Some(nodes) = self.room_nodes.get_mut(&record.room) {
            decrement(nodes, &record.node);
            if nodes.is_empty() {
                self.room_nodes.remove(&record.room);
            }
        }
        decrement(&mut self.per_node, &record.node);
        self.total = self.total.saturating_sub(1);
    }

    fn take(&mut self, id: &SessionId) -> Option<SessionRecord> {
        let record = self.sessions.remove(id)?;
        self.uncount(&record);
        self.tracks.remove(id);
        Some(record)
    }

    fn insert(&mut self, id: SessionId, record: SessionRecord) {
        self.count(&record);
        if let Some(old) = self.sessions.insert(id, record) {
            // Ids are 128 random bits; should one repeat, keep the counts equal to the
            // sessions held.
            self.uncount(&old);
        }
    }
}

fn decrement<K, Q>(map: &mut HashMap<K, usize>, key: &Q)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl SessionStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record session `id` of `identity` in `room` on `node` while the node answers its offer,
    /// or say which cap it would exceed. The session counts against the caps from here on, so
    /// concurrent offers cannot overshoot a cap; dropping the reservation without
    /// [committing](Reservation::commit) it (the node refused) removes it again.
    pub fn reserve(
        &self,
        id: SessionId,
        node: &NodeId,
        room: &str,
        kind: SessionKind,
        identity: &str,
        caps: Caps,
    ) -> Result<Reservation<'_>, CapExceeded> {
        let mut inner = self.lock();
        let at = |cap: usize, n: usize| cap > 0 && n >= cap;
        if at(
            caps.per_identity,
            inner.by_identity.get(identity).copied().unwrap_or(0),
        ) {
            return Err(CapExceeded::Identity {
                identity: identity.to_string(),
                limit: caps.per_identity,
            });
        }
        if at(caps.per_room, inner.by_room.get(room).copied().unwrap_or(0)) {
            return Err(CapExceeded::Room {
                room: room.to_string(),
                limit: caps.per_room,
            });
        }
        if at(caps.total, inner.total) {
            return Err(CapExceeded::Node { limit: caps.total });
        }
        let record = SessionRecord {
            node: node.clone(),
            room: room.to_string(),
            kind,
            identity: identity.to_string(),
            worker: None,
        };
        inner.insert(id, record);
        Ok(Reservation {
            store: self,
            id,
            committed: false,
        })
    }

    pub fn get(&self, id: SessionId) -> Option<SessionRecord> {
        self.lock().sessions.get(&id).cloned()
    }

    /// Forget a session and release its place in the counts.
    pub fn remove(&self, id: SessionId) -> Option<SessionRecord> {
        let mut inner = self.lock();
        inner.take(&id)
    }

    /// Forget a session `node` says it ended. A node can only end its own sessions.
    pub fn remove_ended(&self, node: &NodeId, id: SessionId) -> Option<SessionRecord> {
        let mut inner = self.lock();
        if inner.sessions.get(&id).is_none_or(|r| r.node != *node) {
            return None;
        }
        inner.take(&id)
    }

    /// The sessions recorded on `node`.
    pub fn node_sessions(&self, node: &NodeId) -> Vec<SessionId> {
        Self::on_node(&self.lock(), node)
    }

    fn on_node(inner: &Inner, node: &NodeId) -> Vec<SessionId> {
        inner
            .sessions
            .iter()
            .filter(|(_, r)| r.node == *node)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forget every session on `node` (it stopped); returns how many.
    pub fn remove_node(&self, node: &NodeId) -> usize {
        let mut inner = self.lock();
        let ids = Self::on_node(&inner, node);
        for id in &ids {
            inner.take(id);
        }
        ids.len()
    }

    /// Make control's view of `node` what the node says it holds (it registered again after
    /// a lost link): forget what it no longer has, adopt what control did not know (control
    /// restarted). Returns (forgotten, adopted).
    pub fn reconcile(&self, node: &NodeId, held: &[HeldSession]) -> (usize, usize) {
        let mut inner = self.lock();
        let holds: HashSet<SessionId> = held.iter().map(|h| h.session).collect();
        let gone: Vec<SessionId> = inner
            .sessions
            .iter()
            .filter(|(id, r)| r.node == *node && !holds.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            inner.take(id);
        }
        let mut adopted = 0;
        for h in held {
            if inner.sessions.contains_key(&h.session) {
                continue;
            }
            let record = SessionRecord {
                node: node.clone(),
                room: h.room.as_str().to_string(),
                kind: h.kind,
                identity: h.identity.clone(),
                worker: None,
            };
            inner.insert(h.session, record);
            adopted += 1;
        }
        (gone.len(), adopted)
    }

    /// A node says a session published a track.
    pub fn track_published(&self, node: &NodeId, track: TrackInfo) {
        let mut inner = self.lock();
        let session = track.track.session;
        if inner
            .sessions
            .get(&session)
            .is_some_and(|r| r.node == *node)
        {
            inner.tracks.entry(session).or_default().push(track);
        }
    }

    /// A node says a track ended.
    pub fn track_unpublished(&self, node: &NodeId, track: TrackId) {
        let mut inner = self.lock();
        if inner
            .sessions
            .get(&track.session)
            .is_none_or(|r| r.node != *node)
        {
            return;
        }
        if let Some(tracks) = inner.tracks.get_mut(&track.session) {
            tracks.retain(|t| t.track != track);
        }
    }

    /// The sessions of `room` and the tracks they publish.
    pub fn room(&self, room: &str) -> (Vec<(SessionId, SessionRecord)>, Vec<TrackInfo>) {
        let inner = self.lock();
        let mut sessions: Vec<(SessionId, SessionRecord)> = inner
            .sessions
            .iter()
            .filter(|(_, r)| r.room == room)
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        sessions.sort_by_key(|(id, _)| *id);
        let tracks = sessions
            .iter()
            .flat_map(|(id, _)| inner.tracks.get(id).into_iter().flatten().cloned())
            .collect();
        (sessions, tracks)
    }

    /// The nodes holding sessions of `room`, with how many each.
    pub fn room_nodes(&self, room: &str) -> Vec<(NodeId, usize)> {
        self.lock()
            .room_nodes
            .get(room)
            .map(|nodes| nodes.iter().map(|(n, c)| (n.clone(), *c)).collect())
            .unwrap_or_default()
    }

    /// Sessions and reservations per node.
    pub fn node_counts(&self) -> HashMap<NodeId, usize> {
        self.lock().per_node.clone()
    }

    /// Sessions and reservations on `node`.
    pub fn node_count(&self, node: &NodeId) -> usize {
        self.lock().per_node.get(node).copied().unwrap_or(0)
    }

    /// Rooms and the nodes they are on.
    pub fn rooms(&self) -> Vec<(String, Vec<NodeId>)> {
        let inner = self.lock();
        let mut rooms: Vec<(String, Vec<NodeId>)> = inner
            .room_nodes
            .iter()
            .map(|(room, nodes)| {
                let mut nodes: Vec<NodeId> = nodes.keys().cloned().collect();
                nodes.sort();
                (room.clone(), nodes)
            })
            .collect();
        rooms.sort();
        rooms
    }

    /// Sessions recorded, those being answered included.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions and reservations in `room`.
    pub fn room_count(&self, room: &str) -> usize {
        self.lock().by_room.get(room).copied().unwrap_or(0)
    }

    /// Sessions and reservations of `identity`.
    pub fn identity_count(&self, identity: &str) -> usize {
        self.lock().by_identity.get(identity).copied().unwrap_or(0)
    }

    /// Sessions and reservations in total.
    pub fn total(&self) -> usize {
        self.lock().total
    }
}

/// A session recorded by [`SessionStore::reserve`]; removed on drop unless committed.
#[derive(Debug)]
pub struct Reservation<'a> {
    store: &'a SessionStore,
    id: SessionId,
    committed: bool,
}

impl Reservation<'_> {
    /// The node created the session on `worker`. Returns `false` if the node already reported
    /// it ended (it is then no longer recorded).
    pub fn commit(mut self, worker: WorkerId) -> bool {
        self.committed = true;
        match self.store.lock().sessions.get_mut(&self.id) {
            Some(record) => {
                record.worker = Some(worker);
                true
            }
            None => false,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.store.remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> SessionId {
        SessionId::from_u128(n)
    }

    fn node(name: &str) -> NodeId {
        name.parse().expect("a node id")
    }

    const NO_CAPS: Caps = Caps {
        per_identity: 0,
        per_room: 0,
        total: 0,
    };

    fn reserve<'a>(
        store: &'a SessionStore,
        n: u128,
        room: &str,
        identity: &str,
        caps: Caps,
    ) -> Result<Reservation<'a>, CapExceeded> {
        store.reserve(
            id(n),
            &node("a"),
            room,
            SessionKind::Publish,
            identity,
            caps,
        )
    }

    #[test]
    fn counts_follow_commits_drops_and_removals() {
        let store = SessionStore::default();
        let a = reserve(&store, 1, "r", "alice", NO_CAPS).expect("no caps");
        let b = reserve(&store, 2, "r", "bob", NO_CAPS).expect("no caps");
        assert_eq!(
            (store.room_count("r"), store.total(), store.len()),
            (2, 2, 2)
        );
        assert!(a.commit(WorkerId(0)));
        drop(b);
        assert_eq!(
            (store.room_count("r"), store.total(), store.len()),
            (1, 1, 1)
        );
        assert_eq!(
            store.identity_count("bob"),
            0,
            "a dropped reservation is released"
        );
        assert_eq!(
            store.get(id(1)).map(|r| (r.room, r.identity, r.worker)),
            Some(("r".into(), "alice".into(), Some(WorkerId(0))))
        );
        assert!(store.remove(id(1)).is_some());
        assert!(
            store.remove(id(1)).is_none(),
            "a second removal changes nothing"
        );
        assert_eq!(
            (
                store.room_count("r"),
                store.identity_count("alice"),
                store.total()
            ),
            (0, 0, 0)
        );
        let inner = store.lock();
        assert!(
            inner.by_room.is_empty() && inner.by_identity.is_empty(),
            "no entries kept for empty rooms and identities"
        );
    }

    #[test]
    fn an_end_reported_before_the_answer_is_not_lost() {
        let store = SessionStore::default();
        let r = reserve(&store, 1, "r", "alice", NO_CAPS).expect("no caps");
        // The node ends the session before control has its answer.
        assert!(store.remove_ended(&node("a"), id(1)).is_some());
        assert!(!r.commit(WorkerId(0)), "the session is already gone");
        assert_eq!((store.len(), store.total()), (0, 0));
    }

    #[test]
    fn a_node_ends_only_its_own_sessions() {
        let store = SessionStore::default();
        assert!(
            reserve(&store, 1, "r", "alice", NO_CAPS)
                .expect("ok")
                .commit(WorkerId(0))
        );
        assert!(store.remove_ended(&node("b"), id(1)).is_none());
        assert_eq!(store.len(), 1);
        assert_eq!(store.remove_node(&node("b")), 0);
        assert_eq!(store.remove_node(&node("a")), 1);
        assert_eq!((store.len(), store.total()), (0, 0));
    }

    #[test]
    fn each_cap_refuses_the_session_past_it() {
        let store = SessionStore::default();
        let caps = Caps {
            per_identity: 2,
            per_room: 3,
            total: 4,
        };
        let mut held = Vec::new();
        for n in 0..2 {
            held.push(reserve(&store, 10 + n, "r", "alice", caps).expect("under the caps"));
        }
        let e = reserve(&store, 20, "other", "alice", caps).expect_err("alice is at 2");
        assert_eq!(
            e,
            CapExceeded::Identity {
                identity: "alice".into(),
                limit: 2
            }
        );
        assert!(
            e.to_string().contains("limits.max_sessions_per_identity"),
            "{e}"
        );

        held.push(reserve(&store, 21, "r", "bob", caps).expect("room r has 2"));
        let e = reserve(&store, 22, "r", "carol", caps).expect_err("room r is at 3");
        assert_eq!(
            e,
            CapExceeded::Room {
                room: "r".into(),
                limit: 3
            }
        );
        assert!(
            e.to_string().contains("limits.max_sessions_per_room"),
            "{e}"
        );

        held.push(reserve(&store, 23, "s", "carol", caps).expect("4th in total"));
        let e = reserve(&store, 24, "t", "dave", caps).expect_err("4 in total");
        assert_eq!(e, CapExceeded::Node { limit: 4 });
        assert!(e.to_string().contains("limits.max_sessions"), "{e}");

        // Ending one session makes room again.
        let first = held.remove(0);
        assert!(first.commit(WorkerId(1)));
        assert!(reserve(&store, 25, "t", "dave", caps).is_err());
        store.remove(id(10));
        assert!(reserve(&store, 26, "t", "dave", caps).is_ok());
    }
}
