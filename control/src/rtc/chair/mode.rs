//! The chair's half of a hybrid room: the room's mode machine ([`crate::rtc::hybrid`]), fed
//! with joins, leaves and acknowledgements from the room's feed, its actions told to the
//! participants as room events, and the mode the room settled in kept in the store (so that a
//! new chair, or a participant joining, knows it).

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Chair, now};
use crate::http::AppState;
use crate::rtc::hybrid::{Action, HybridConfig, Mode, ModeMachine};
use crate::rtc::participant::RoomEvent;
use crate::store::StoreError;

/// The store's name for a hybrid room's mode.
pub const MODE: &str = "mode";

/// The mode a hybrid room settled in, as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMode {
    pub mode: Mode,
    pub epoch: u64,
}

/// `room`'s settled mode, if a chair recorded one (unreadable: none, with a warning).
pub async fn stored_mode(state: &AppState, room: &str) -> Result<Option<StoredMode>, StoreError> {
    let Some(json) = state.sessions.room_value(room, MODE).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_str(&json)
        .inspect_err(|e| tracing::warn!(room, error = %e, "unreadable room mode; ignoring it"))
        .ok())
}

/// Upper bounds (seconds) of the switch duration histogram.
const BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// Switches completed on this instance, for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct SwitchFigures {
    to_sfu: u64,
    to_p2p: u64,
    /// Participants removed for not acknowledging a switch.
    failed_acks: u64,
    /// Switch durations, command to last acknowledgement: count per bucket (cumulative when
    /// rendered), sum and count.
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl SwitchFigures {
    fn switched(&mut self, to: Mode, took: Duration) {
        match to {
            Mode::Sfu => self.to_sfu += 1,
            Mode::P2p => self.to_p2p += 1,
        }
        let secs = took.as_secs_f64();
        if let Some(at) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[at] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }

    pub(super) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP sfu_room_switches_total Hybrid rooms' completed moves between peer to peer and the SFU, by target, chaired here.\n\
             # TYPE sfu_room_switches_total counter\n\
             sfu_room_switches_total{{to=\"sfu\"}} {}\nsfu_room_switches_total{{to=\"p2p\"}} {}\n\
             # HELP sfu_room_switch_failed_acks_total Participants removed for not acknowledging a switch within hybrid.ack_timeout_secs.\n\
             # TYPE sfu_room_switch_failed_acks_total counter\nsfu_room_switch_failed_acks_total {}\n\
             # HELP sfu_room_switch_seconds Time from a switch's command to its last acknowledgement.\n\
             # TYPE sfu_room_switch_seconds histogram",
            self.to_sfu, self.to_p2p, self.failed_acks
        );
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "sfu_room_switch_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "sfu_room_switch_seconds_bucket{{le=\"+Inf\"}} {}\nsfu_room_switch_seconds_sum {}\nsfu_room_switch_seconds_count {}",
            self.count, self.sum, self.count
        );
    }
}

impl Chair {
    /// The room is a hybrid room: start its mode machine where the room is. A new room starts
    /// peer to peer; a room a previous chair ran resumes its recorded mode; a room in use
    /// without one (it just became hybrid) is on the SFU.
    pub(super) async fn start_mode(&mut self, config: HybridConfig) {
        let room = self.room.as_str();
        let roster = match self.state.sessions.roster(room).await {
            Ok(roster) => roster,
            Err(e) => {
                tracing::warn!(%room, error = %e, "the chair cannot read the roster; trying again next tick");
                return;
            }
        };
        let stored = stored_mode(&self.state, room).await.ok().flatten();
        let (mode, epoch) = match stored {
            Some(s) => (s.mode, s.epoch),
            None if roster.is_empty() => (Mode::P2p, 0),
            None => (Mode::Sfu, 0),
        };
        tracing::info!(%room, ?mode, epoch, members = roster.len(), "hybrid room: chairing its mode");
        let mut machine = ModeMachine::resume(config, mode, epoch);
        let now = now();
        for entry in roster {
            machine.join(entry.identity, now);
        }
        self.mode = Some(machine);
        self.record(mode, epoch).await;
        self.act().await;
    }

    /// The room stopped being a hybrid room: everyone goes through the SFU from now on.
    pub(super) async fn stop_mode(&mut self) {
        let Some(machine) = self.mode.take() else {
            return;
        };
        tracing::info!(room = %self.room, "no longer a hybrid room: everyone through the SFU");
        if machine.mode() == Mode::P2p {
            let epoch = machine.epoch() + 1;
            let roster = self.state.sessions.roster(self.room.as_str()).await;
            for entry in roster.unwrap_or_default() {
                self.publish(&RoomEvent::Switch {
                    identity: entry.identity,
                    to: Mode::Sfu,
                    epoch,
                })
                .await;
            }
        }
        let _ = self
            .state
            .sessions
            .set_room_value(self.room.as_str(), MODE, None)
            .await;
    }

    /// Carry out what the mode machine decided.
    pub(super) async fn act(&mut self) {
        while let Some(action) = self.mode.as_mut().and_then(ModeMachine::poll_action) {
            match action {
                Action::Switch { member, to, epoch } => {
                    self.publish(&RoomEvent::Switch {
                        identity: member,
                        to,
                        epoch,
                    })
                    .await;
                }
                Action::Welcome {
                    member,
                    mode,
                    epoch,
                } => {
                    let prewarm = self.mode.as_ref().is_some_and(ModeMachine::prewarmed);
                    self.publish(&RoomEvent::Mode {
                        identity: member,
                        mode,
                        epoch,
                        prewarm,
                    })
                    .await;
                }
                Action::Prewarm => self.publish(&RoomEvent::Prewarm { on: true }).await,
                Action::ReleasePrewarm => self.publish(&RoomEvent::Prewarm { on: false }).await,
                Action::Remove { member, epoch } => {
                    let timeout = self.state.hybrid.ack_timeout_secs;
                    tracing::warn!(room = %self.room, identity = %member, epoch, "removed: did not acknowledge a switch");
                    self.figures(|f| f.failed_acks += 1);
                    self.publish(&RoomEvent::Remove {
                        identity: member,
                        reason: format!(
                            "did not acknowledge switch {epoch} within {timeout} s (hybrid.ack_timeout_secs)"
                        ),
                    })
                    .await;
                }
                Action::Switched {
                    mode,
                    epoch,
                    took,
                    removed,
                } => {
                    tracing::info!(room = %self.room, ?mode, epoch, took_ms = took.as_millis() as u64, removed, "room switched");
                    self.figures(|f| f.switched(mode, took));
                    self.record(mode, epoch).await;
                }
            }
        }
    }

    /// Keep the mode the room settled in, for a joining participant and a future chair.
    async fn record(&self, mode: Mode, epoch: u64) {
        let json = serde_json::to_string(&StoredMode { mode, epoch }).unwrap_or_default();
        if let Err(e) = self
            .state
            .sessions
            .set_room_value(self.room.as_str(), MODE, Some(&json))
            .await
        {
            tracing::warn!(room = %self.room, error = %e, "cannot record the room's mode");
        }
    }

    fn figures(&self, f: impl FnOnce(&mut SwitchFigures)) {
        let mut figures = self
            .state
            .chairs
            .switches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut figures);
    }
}
