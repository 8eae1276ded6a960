//! Control's own record of the sessions it created: which room, which kind, whose token, and
//! how many each room and identity holds (for the session caps). This is the in-memory state
//! of the embedded default; the node knows sessions only by id.

use std::collections::HashMap;
use std::sync::Mutex;

use sfu_core::SessionKind;
use sfu_core::ids::{SessionId, WorkerId};

/// One session as control knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub room: String,
    pub kind: SessionKind,
    pub identity: String,
    pub worker: WorkerId,
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

/// Sessions by id, with live counts per room, per identity and in total. A mutex is fine: this
/// is touched once per signaling request, and every operation is O(1).
#[derive(Debug, Default)]
pub struct SessionStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionId, SessionRecord>,
    /// Sessions and outstanding reservations per room / identity / in total. Entries at zero
    /// are removed, so the maps hold only rooms and identities with sessions.
    by_room: HashMap<String, usize>,
    by_identity: HashMap<String, usize>,
    total: usize,
}

impl Inner {
    fn count(&mut self, room: &str, identity: &str) {
        *self.by_room.entry(room.to_string()).or_default() += 1;
        *self.by_identity.entry(identity.to_string()).or_default() += 1;
        self.total += 1;
    }

    fn uncount(&mut self, room: &str, identity: &str) {
        decrement(&mut self.by_room, room);
        decrement(&mut self.by_identity, identity);
        self.total = self.total.saturating_sub(1);
    }
}

fn decrement(map: &mut HashMap<String, usize>, key: &str) {
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

    /// Hold a place for a session of `identity` in `room` while the node answers its offer, or
    /// say which cap it would exceed. The place counts against the caps until the reservation
    /// is [committed](Reservation::commit) as a session or dropped, so concurrent offers cannot
    /// overshoot a cap.
    pub fn reserve(
        &self,
        room: &str,
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
        inner.count(room, identity);
        Ok(Reservation {
            store: self,
            room: room.to_string(),
            identity: identity.to_string(),
            committed: false,
        })
    }

    pub fn get(&self, id: SessionId) -> Option<SessionRecord> {
        self.lock().sessions.get(&id).cloned()
    }

    /// Forget a session and release its place in the counts.
    pub fn remove(&self, id: SessionId) -> Option<SessionRecord> {
        let mut inner = self.lock();
        let record = inner.sessions.remove(&id)?;
        inner.uncount(&record.room, &record.identity);
        Some(record)
    }

    /// Sessions recorded (reservations not included).
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

/// A place held by [`SessionStore::reserve`]; released on drop unless committed.
#[derive(Debug)]
pub struct Reservation<'a> {
    store: &'a SessionStore,
    room: String,
    identity: String,
    committed: bool,
}

impl Reservation<'_> {
    /// Turn the place into the session the node created.
    pub fn commit(mut self, id: SessionId, kind: SessionKind, worker: WorkerId) {
        let record = SessionRecord {
            room: std::mem::take(&mut self.room),
            kind,
            identity: std::mem::take(&mut self.identity),
            worker,
        };
        self.committed = true;
        let mut inner = self.store.lock();
        if let Some(old) = inner.sessions.insert(id, record) {
            // Ids are unique; should one repeat, keep the counts equal to the sessions held.
            inner.uncount(&old.room, &old.identity);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.store.lock().uncount(&self.room, &self.identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SessionId {
        n.to_string().parse().expect("a session id")
    }

    const NO_CAPS: Caps = Caps {
        per_identity: 0,
        per_room: 0,
        total: 0,
    };

    #[test]
    fn counts_follow_commits_drops_and_removals() {
        let store = SessionStore::default();
        let a = store.reserve("r", "alice", NO_CAPS).expect("no caps");
        let b = store.reserve("r", "bob", NO_CAPS).expect("no caps");
        assert_eq!(
            (store.room_count("r"), store.total(), store.len()),
            (2, 2, 0),
            "reservations count, but are not sessions"
        );
        a.commit(id(1), SessionKind::Publish, WorkerId(0));
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
            store.get(id(1)).map(|r| (r.room, r.identity)),
            Some(("r".into(), "alice".into()))
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
    fn each_cap_refuses_the_session_past_it() {
        let store = SessionStore::default();
        let caps = Caps {
            per_identity: 2,
            per_room: 3,
            total: 4,
        };
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(store.reserve("r", "alice", caps).expect("under the caps"));
        }
        let e = store
            .reserve("other", "alice", caps)
            .expect_err("alice is at 2");
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

        held.push(store.reserve("r", "bob", caps).expect("room r has 2"));
        let e = store
            .reserve("r", "carol", caps)
            .expect_err("room r is at 3");
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

        held.push(store.reserve("s", "carol", caps).expect("4th in total"));
        let e = store.reserve("t", "dave", caps).expect_err("4 in total");
        assert_eq!(e, CapExceeded::Node { limit: 4 });
        assert!(e.to_string().contains("limits.max_sessions"), "{e}");

        // Ending one session makes room again.
        let first = held.remove(0);
        first.commit(id(7), SessionKind::Subscribe, WorkerId(1));
        assert!(store.reserve("t", "dave", caps).is_err());
        store.remove(id(7));
        assert!(store.reserve("t", "dave", caps).is_ok());
    }
}
