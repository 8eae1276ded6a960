//! Meeting rooms' shared state (docs/signaling.md): each room's **roster** (who is in it, with
//! what tracks, as opaque JSON written by the participant's control instance) and its **event
//! feed** (every change, to every control instance with participants in the room). In memory
//! for one control instance; in Redis (a hash per room, pub/sub per room) for several.
//!
//! A roster entry carries its writer's join id (`pid`): a participant replaced by a newer join
//! of the same identity, possibly on another instance, cannot remove its successor's entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

/// Room events buffered per local listener before the slowest one starts missing some (it
/// then sees `Lagged` and resynchronises from the roster).
pub const FEED_CAPACITY: usize = 1024;

/// Whether a participant got into a room's roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosterJoin {
    Joined,
    /// The room has `max` other participants already.
    Full,
}

/// One participant in a roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    pub identity: String,
    /// The join that wrote it.
    pub pid: String,
    /// The participant as JSON (control's `rtc` module defines it).
    pub data: String,
}

/// A room's events as one control instance receives them.
pub type RoomFeed = broadcast::Receiver<Arc<str>>;

/// Rosters and feeds of one control instance (the in-memory store).
#[derive(Debug, Default)]
pub struct MemoryRooms {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rosters: HashMap<String, HashMap<String, RosterEntry>>,
    feeds: HashMap<String, broadcast::Sender<Arc<str>>>,
    /// Rooms' small named values (their settings, their media mode), by (room, name).
    values: HashMap<(String, String), String>,
    /// Rooms' chair leases: holder and when the lease runs out.
    chairs: HashMap<String, (String, Instant)>,
}

impl MemoryRooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put `entry` in `room`'s roster, replacing the same identity's entry, unless the room
    /// already holds `max` other identities (0: no limit).
    pub fn roster_put(&self, room: &str, entry: RosterEntry, max: usize) -> RosterJoin {
        let mut inner = self.lock();
        let roster = inner.rosters.entry(room.to_string()).or_default();
        let others = roster.len() - usize::from(roster.contains_key(&entry.identity));
        if max > 0 && others >= max {
            if roster.is_empty() {
                inner.rosters.remove(room);
            }
            return RosterJoin::Full;
        }
        roster.insert(entry.identity.clone(), entry);
        RosterJoin::Joined
    }

    /// Replace the data of `identity`'s entry if join `pid` still owns it. Returns whether it
    /// did.
    pub fn roster_update(&self, room: &str, identity: &str, pid: &str, data: &str) -> bool {
        let mut inner = self.lock();
        match inner
            .rosters
            .get_mut(room)
            .and_then(|r| r.get_mut(identity))
        {
            Some(entry) if entry.pid == pid => {
                entry.data = data.to_string();
                true
            }
            _ => false,
        }
    }

    /// Remove `identity`'s entry if join `pid` still owns it. Returns whether it did.
    pub fn roster_remove(&self, room: &str, identity: &str, pid: &str) -> bool {
        let mut inner = self.lock();
        let Some(roster) = inner.rosters.get_mut(room) else {
            return false;
        };
        let owned = roster.get(identity).is_some_and(|e| e.pid == pid);
        if owned {
            roster.remove(identity);
            if roster.is_empty() {
                inner.rosters.remove(room);
            }
        }
        owned
    }

    pub fn roster(&self, room: &str) -> Vec<RosterEntry> {
        let inner = self.lock();
        let mut entries: Vec<RosterEntry> = inner
            .rosters
            .get(room)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        entries.sort_by(|a, b| a.identity.cmp(&b.identity));
        entries
    }

    /// Send `message` to every listener of `room` (the sender's own listeners included).
    pub fn publish(&self, room: &str, message: &str) {
        let mut inner = self.lock();
        let Some(feed) = inner.feeds.get(room) else {
            return;
        };
        if feed.send(Arc::from(message)).is_err() {
            inner.feeds.remove(room); // nobody listens any more
        }
    }

    /// `room`'s value `name`, if set.
    pub fn value(&self, room: &str, name: &str) -> Option<String> {
        let key = (room.to_string(), name.to_string());
        self.lock().values.get(&key).cloned()
    }

    /// Set (or with `None` remove) `room`'s value `name`.
    pub fn set_value(&self, room: &str, name: &str, value: Option<&str>) {
        let key = (room.to_string(), name.to_string());
        let mut inner = self.lock();
        match value {
            Some(v) => inner.values.insert(key, v.to_string()),
            None => inner.values.remove(&key),
        };
    }

    /// Take or renew `room`'s chair lease for `holder` for `ttl`; `false` while another
    /// holder's lease runs.
    pub fn chair_lease(&self, room: &str, holder: &str, ttl: Duration, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.chairs.get(room) {
            Some((other, until)) if other != holder && *until > now => false,
            _ => {
                inner
                    .chairs
                    .insert(room.to_string(), (holder.to_string(), now + ttl));
                true
            }
        }
    }

    /// Give up `room`'s chair lease if `holder` has it.
    pub fn chair_release(&self, room: &str, holder: &str) {
        let mut inner = self.lock();
        if inner.chairs.get(room).is_some_and(|(h, _)| h == holder) {
            inner.chairs.remove(room);
        }
    }

    /// Listen to `room`'s events from now on.
    pub fn subscribe(&self, room: &str) -> RoomFeed {
        let mut inner = self.lock();
        inner.feeds.retain(|_, feed| feed.receiver_count() > 0);
        inner
            .feeds
            .entry(room.to_string())
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(identity: &str, pid: &str) -> RosterEntry {
        RosterEntry {
            identity: identity.into(),
            pid: pid.into(),
            data: format!("{{\"identity\":\"{identity}\"}}"),
        }
    }

    #[test]
    fn a_full_room_refuses_a_new_identity_but_not_a_rejoin() {
        let rooms = MemoryRooms::default();
        assert_eq!(
            rooms.roster_put("r", entry("a", "1"), 2),
            RosterJoin::Joined
        );
        assert_eq!(
            rooms.roster_put("r", entry("b", "2"), 2),
            RosterJoin::Joined
        );
        assert_eq!(rooms.roster_put("r", entry("c", "3"), 2), RosterJoin::Full);
        assert_eq!(
            rooms.roster_put("r", entry("a", "4"), 2),
            RosterJoin::Joined
        );
        let roster = rooms.roster("r");
        assert_eq!(roster.len(), 2);
        assert_eq!(roster[0].pid, "4");
    }

    #[test]
    fn a_replaced_join_cannot_remove_or_update_its_successor() {
        let rooms = MemoryRooms::default();
        rooms.roster_put("r", entry("a", "old"), 0);
        rooms.roster_put("r", entry("a", "new"), 0);
        assert!(!rooms.roster_update("r", "a", "old", "{}"));
        assert!(!rooms.roster_remove("r", "a", "old"));
        assert_eq!(rooms.roster("r").len(), 1);
        assert!(rooms.roster_remove("r", "a", "new"));
        assert!(rooms.roster("r").is_empty());
    }

    #[test]
    fn a_chair_lease_has_one_holder_until_it_runs_out_or_is_released() {
        let rooms = MemoryRooms::default();
        let ttl = Duration::from_secs(5);
        let t0 = Instant::now();
        assert!(rooms.chair_lease("r", "a", ttl, t0));
        assert!(!rooms.chair_lease("r", "b", ttl, t0 + Duration::from_secs(4)));
        assert!(rooms.chair_lease("r", "a", ttl, t0 + Duration::from_secs(4)));
        assert!(!rooms.chair_lease("r", "b", ttl, t0 + Duration::from_secs(8)));
        assert!(rooms.chair_lease("r", "b", ttl, t0 + Duration::from_secs(9)));
        rooms.chair_release("r", "a"); // not the holder: nothing
        assert!(!rooms.chair_lease("r", "a", ttl, t0 + Duration::from_secs(9)));
        rooms.chair_release("r", "b");
        assert!(rooms.chair_lease("r", "a", ttl, t0 + Duration::from_secs(9)));
    }

    #[tokio::test]
    async fn events_reach_every_listener_of_the_room_only() {
        let rooms = MemoryRooms::default();
        let mut a = rooms.subscribe("r");
        let mut b = rooms.subscribe("r");
        let mut other = rooms.subscribe("s");
        rooms.publish("r", "hello");
        assert_eq!(&*a.recv().await.expect("a hears"), "hello");
        assert_eq!(&*b.recv().await.expect("b hears"), "hello");
        assert!(other.try_recv().is_err());
        drop((a, b));
        rooms.publish("r", "nobody"); // drops the feed
        assert_eq!(rooms.lock().feeds.len(), 1);
    }
}
