//! Control's own record of the sessions it created: which room, which kind, whose token. This
//! is the in-memory state of the embedded default; the node knows sessions only by id.

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

/// Sessions by id. A mutex is fine: this is touched once per signaling request.
#[derive(Debug, Default)]
pub struct SessionStore {
    sessions: Mutex<HashMap<SessionId, SessionRecord>>,
}

impl SessionStore {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionRecord>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: SessionId, record: SessionRecord) {
        self.map().insert(id, record);
    }

    pub fn get(&self, id: SessionId) -> Option<SessionRecord> {
        self.map().get(&id).cloned()
    }

    pub fn remove(&self, id: SessionId) -> Option<SessionRecord> {
        self.map().remove(&id)
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
