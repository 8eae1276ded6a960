//! The cluster head's decisions, free of I/O: where a room goes ([`placement`]) and what state
//! each media node is in ([`health`]). The links to the nodes and the shared store feed these
//! with data and the time, and carry out what they decide.

pub mod cascade;
pub mod health;
pub mod link;
pub mod nodes;
pub mod placement;
pub mod shared;

pub use health::{
    Cause, HealthConfig, HealthError, HealthEvent, HealthTable, Incarnation, NodeHealth, NodeState,
};
pub use placement::{
    Decision, NodeSnapshot, PlaceError, Placed, Placement, PlacementConfig, RoomRequest,
};

/// A cluster setting out of range; `key` is the setting's name within its section, so the
/// configuration layer can prefix its section (`cluster.dead_after`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct SettingError {
    /// The setting, e.g. `dead_after`.
    pub key: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl SettingError {
    fn new(key: &'static str, reason: impl Into<String>) -> Self {
        Self {
            key,
            reason: reason.into(),
        }
    }
}
