//! Push-to-talk floor control for one channel, as a sans-IO state machine: one talker at a
//! time, the others queued in order of asking, a talker's turn cut at `max_talk`, and a
//! moderator who asks taking the floor at once.
//!
//! Inputs are requests, releases, leaves and the time; outputs say who was granted, queued,
//! denied or revoked, and every change of holder ([`FloorEvent::Holder`]), which is what the node
//! forwards by: only the holder's audio reaches the listeners.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// `[ptt]`: push-to-talk channels' floor limits (rooms with the `ptt` option).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PttConfig {
    /// The longest turn, in seconds: the floor is then revoked and passes on.
    pub max_talk_secs: u64,
    /// Requests that may wait for the floor; one more is denied.
    pub max_queue: usize,
}

impl Default for PttConfig {
    fn default() -> Self {
        let floor = FloorConfig::default();
        Self {
            max_talk_secs: floor.max_talk.as_secs(),
            max_queue: floor.max_queue,
        }
    }
}

impl PttConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.max_talk_secs == 0 || self.max_talk_secs > 3600 {
            return Err(crate::config::ConfigError::Invalid {
                key: "ptt.max_talk_secs".into(),
                reason: "must be between 1 and 3600".into(),
            });
        }
        Ok(())
    }

    pub fn floor(&self) -> FloorConfig {
        FloorConfig {
            max_talk: Duration::from_secs(self.max_talk_secs),
            max_queue: self.max_queue,
        }
    }
}

/// The limits of one channel's floor (`[ptt]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloorConfig {
    /// The longest turn: the floor is revoked after this.
    pub max_talk: Duration,
    /// Requests waiting at most; one more is denied.
    pub max_queue: usize,
}

impl Default for FloorConfig {
    fn default() -> Self {
        Self {
            max_talk: Duration::from_secs(30),
            max_queue: 16,
        }
    }
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The queue is full.
    QueueFull,
}

/// Why a turn ended without its talker releasing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// It lasted `max_talk`.
    TimeUp,
    /// A moderator took the floor.
    Preempted,
}

/// What the floor tells its shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorEvent<P> {
    /// `member` may talk until `until`.
    Granted {
        member: P,
        until: Instant,
    },
    /// `member` waits; `position` 1 is next.
    Queued {
        member: P,
        position: usize,
    },
    Denied {
        member: P,
        reason: Denied,
    },
    /// `member`'s turn ended against its will.
    Revoked {
        member: P,
        reason: Revoked,
    },
    /// The floor changed hands (`None`: nobody talks): the node forwards this one's audio only.
    Holder(Option<P>),
}

#[derive(Debug, Clone)]
struct Turn<P> {
    member: P,
    until: Instant,
}

/// One channel's floor.
#[derive(Debug)]
pub struct Floor<P> {
    config: FloorConfig,
    holder: Option<Turn<P>>,
    queue: VecDeque<P>,
    events: VecDeque<FloorEvent<P>>,
}

impl<P: PartialEq + Clone + Debug> Floor<P> {
    pub fn new(config: FloorConfig) -> Self {
        Self {
            config,
            holder: None,
            queue: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Who holds the floor.
    pub fn holder(&self) -> Option<&P> {
        self.holder.as_ref().map(|t| &t.member)
    }

    /// Who waits, next first.
    pub fn queue(&self) -> impl Iterator<Item = &P> {
        self.queue.iter()
    }

    /// `member` asks to talk; a `moderator` takes the floor at once (the holder is revoked and
    /// queued first, to resume after). Asking again while holding or queued changes nothing
    /// (the answer is repeated).
    pub fn request(&mut self, member: P, moderator: bool, now: Instant) {
        if let Some(turn) = self.holder.as_ref().filter(|t| t.member == member) {
            self.events.push_back(FloorEvent::Granted {
                member,
                until: turn.until,
            });
            return;
        }
        if let Some(at) = self.queue.iter().position(|m| *m == member) {
            if !moderator {
                self.events.push_back(FloorEvent::Queued {
                    member,
                    position: at + 1,
                });
                return;
            }
            self.queue.remove(at);
        }
        match self.holder.take() {
            None => self.grant(member, now),
            Some(turn) if moderator => {
                self.events.push_back(FloorEvent::Revoked {
                    member: turn.member.clone(),
                    reason: Revoked::Preempted,
                });
                self.queue.push_front(turn.member);
                self.grant(member, now);
            }
            Some(turn) => {
                self.holder = Some(turn);
                if self.queue.len() >= self.config.max_queue {
                    self.events.push_back(FloorEvent::Denied {
                        member,
                        reason: Denied::QueueFull,
                    });
                } else {
                    self.queue.push_back(member.clone());
                    self.events.push_back(FloorEvent::Queued {
                        member,
                        position: self.queue.len(),
                    });
                }
            }
        }
    }

    /// `member` lets go: of the floor (the next in line gets it) or of its place in line.
    pub fn release(&mut self, member: &P, now: Instant) {
        if self.holder.as_ref().is_some_and(|t| t.member == *member) {
            self.holder = None;
            self.pass_on(now);
        } else {
            self.queue.retain(|m| m != member);
        }
    }

    /// `member` left the channel.
    pub fn leave(&mut self, member: &P, now: Instant) {
        self.release(member, now);
    }

    /// Time passed: a turn that reached `max_talk` is revoked.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(turn) = self.holder.take_if(|t| now >= t.until) else {
            return;
        };
        self.events.push_back(FloorEvent::Revoked {
            member: turn.member,
            reason: Revoked::TimeUp,
        });
        self.pass_on(now);
    }

    /// When the current turn runs out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.holder.as_ref().map(|t| t.until)
    }

    pub fn poll_event(&mut self) -> Option<FloorEvent<P>> {
        self.events.pop_front()
    }

    fn grant(&mut self, member: P, now: Instant) {
        let until = now + self.config.max_talk;
        self.holder = Some(Turn {
            member: member.clone(),
            until,
        });
        self.events.push_back(FloorEvent::Granted {
            member: member.clone(),
            until,
        });
        self.events.push_back(FloorEvent::Holder(Some(member)));
    }

    /// The floor is free: the next in line gets it, or nobody holds it.
    fn pass_on(&mut self, now: Instant) {
        match self.queue.pop_front() {
            Some(next) => self.grant(next, now),
            None => self.events.push_back(FloorEvent::Holder(None)),
        }
    }
}

#[cfg(test)]
// Tests take a real instant as the origin of their simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn drain(f: &mut Floor<u32>) -> Vec<FloorEvent<u32>> {
        std::iter::from_fn(|| f.poll_event()).collect()
    }

    #[test]
    fn requests_queue_in_order_and_the_floor_passes_on_release() {
        let t0 = Instant::now();
        let max_talk = FloorConfig::default().max_talk;
        let mut f = Floor::new(FloorConfig::default());
        f.request(1, false, t0);
        f.request(2, false, t0);
        f.request(3, false, t0);
        assert_eq!(
            drain(&mut f),
            vec![
                FloorEvent::Granted {
                    member: 1,
                    until: t0 + max_talk
                },
                FloorEvent::Holder(Some(1)),
                FloorEvent::Queued {
                    member: 2,
                    position: 1
                },
                FloorEvent::Queued {
                    member: 3,
                    position: 2
                },
            ]
        );
        // 2 gives up its place; 1 releases: 3 is next.
        let t1 = t0 + Duration::from_secs(4);
        f.release(&2, t1);
        f.release(&1, t1);
        assert_eq!(
            drain(&mut f),
            vec![
                FloorEvent::Granted {
                    member: 3,
                    until: t1 + max_talk
                },
                FloorEvent::Holder(Some(3)),
            ]
        );
        f.leave(&3, t1);
        assert_eq!(drain(&mut f), vec![FloorEvent::Holder(None)]);
    }

    #[test]
    fn a_turn_is_cut_at_max_talk_and_a_moderator_takes_the_floor_at_once() {
        let t0 = Instant::now();
        let config = FloorConfig {
            max_talk: Duration::from_secs(10),
            max_queue: 1,
        };
        let mut f = Floor::new(config);
        f.request(1, false, t0);
        f.request(2, false, t0);
        f.request(3, false, t0);
        let events = drain(&mut f);
        assert_eq!(
            events.last(),
            Some(&FloorEvent::Denied {
                member: 3,
                reason: Denied::QueueFull
            })
        );
        // 1's time is up: revoked, 2 talks.
        assert_eq!(f.poll_timeout(), Some(t0 + config.max_talk));
        f.handle_timeout(t0 + config.max_talk);
        let t1 = t0 + config.max_talk;
        assert_eq!(
            drain(&mut f),
            vec![
                FloorEvent::Revoked {
                    member: 1,
                    reason: Revoked::TimeUp
                },
                FloorEvent::Granted {
                    member: 2,
                    until: t1 + config.max_talk
                },
                FloorEvent::Holder(Some(2)),
            ]
        );
        // A moderator: 2 is revoked and goes first in line, 9 talks.
        f.request(9, true, t1);
        assert_eq!(
            drain(&mut f),
            vec![
                FloorEvent::Revoked {
                    member: 2,
                    reason: Revoked::Preempted
                },
                FloorEvent::Granted {
                    member: 9,
                    until: t1 + config.max_talk
                },
                FloorEvent::Holder(Some(9)),
            ]
        );
        assert_eq!(f.queue().copied().collect::<Vec<_>>(), vec![2]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Request(u32, bool),
        Release(u32),
        Leave(u32),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u32..8, prop::bool::weighted(0.1)).prop_map(|(m, moderator)| Step::Request(m, moderator)),
            2 => (0u32..8).prop_map(Step::Release),
            1 => (0u32..8).prop_map(Step::Leave),
            2 => (0u64..40_000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Under any sequence of requests (some by moderators), releases, leaves and waits:
        /// the floor is never idle while someone waits; nobody is both holding and queued, or
        /// queued twice; no turn outlives max_talk; and the Holder events, replayed, name the
        /// holder.
        #[test]
        fn one_talker_no_idle_floor_no_endless_turn(steps in proptest::collection::vec(step(), 1..200)) {
            let config = FloorConfig { max_talk: Duration::from_secs(30), max_queue: 4 };
            let mut now = Instant::now();
            let mut f = Floor::new(config);
            let mut announced: Option<u32> = None;
            let mut granted_at: Option<(u32, Instant)> = None;
            for s in steps {
                match s {
                    Step::Request(m, moderator) => f.request(m, moderator, now),
                    Step::Release(m) => f.release(&m, now),
                    Step::Leave(m) => f.leave(&m, now),
                    Step::Wait(ms) => {
                        let until = now + Duration::from_millis(ms);
                        while let Some(due) = f.poll_timeout().filter(|d| *d <= until) {
                            now = due.max(now);
                            f.handle_timeout(now);
                        }
                        now = until;
                    }
                }
                for e in std::iter::from_fn(|| f.poll_event()) {
                    match e {
                        FloorEvent::Holder(h) => announced = h,
                        // A repeated answer repeats the turn's end: the start is exact.
                        FloorEvent::Granted { member, until } => {
                            granted_at = Some((member, until - config.max_talk));
                        }
                        _ => {}
                    }
                }
                prop_assert_eq!(announced, f.holder().copied());
                let queue: Vec<u32> = f.queue().copied().collect();
                let mut dedup = queue.clone();
                dedup.sort_unstable();
                dedup.dedup();
                prop_assert_eq!(dedup.len(), queue.len(), "queued twice: {:?}", queue);
                if let Some(h) = f.holder() {
                    prop_assert!(!queue.contains(h));
                    let (m, at) = granted_at.expect("a grant was announced");
                    prop_assert_eq!(m, *h);
                    prop_assert!(now.saturating_duration_since(at) <= config.max_talk);
                } else {
                    prop_assert!(queue.is_empty(), "idle floor while {:?} wait", queue);
                    granted_at = None;
                }
            }
        }
    }
}
