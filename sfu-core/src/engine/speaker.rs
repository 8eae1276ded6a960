//! Active speakers of a room, from the audio levels publishers put in their packets (RFC 6464:
//! 0 is the loudest, 127 silence, in -dBov), as a sans-IO state machine: packets' levels and
//! the time go in, the ordered list of speakers comes out when it changes. Like the engine it
//! never reads the clock.
//!
//! Each participant has a *score*: how much of the recent past it spent speaking, an
//! exponential average (time constant [`SpeakerConfig::smoothing`]) of "this packet is speech"
//! (level at or above [`SpeakerConfig::speech_dbov`], and the voice flag when the sender sets
//! it). Silence between packets (discontinuous transmission sends none) counts as not
//! speaking. A participant becomes a speaker when its score reaches
//! [`SpeakerConfig::start`], which takes about half a time constant of steady speech, so a
//! cough or a door does not count; it stays one until its score has been below
//! [`SpeakerConfig::stop`] for [`SpeakerConfig::hold`], so the pauses between words and
//! sentences do not drop it.
//!
//! The list is ordered by score, loudest talker first, with one rule against flapping: the
//! first place changes hands only when the challenger's score exceeds the holder's by
//! [`SpeakerConfig::switch_margin`]. A change of the list (who is in it, or who is first)
//! is reported once; changes of order further down are reported with the next change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sfu_proto::{AudioLevel, NodeEvent, ParticipantId, RoomId, TrackId, WorkerId};

use crate::ids::RoomKey;

/// The audio a packet carries (Opus's usual 20 ms frames).
const PACKET_TIME: Duration = Duration::from_millis(20);

/// How the detector decides; the defaults suit 20 ms Opus packets of speech.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerConfig {
    /// A packet at this level or louder is speech (-dBov: smaller is louder).
    pub speech_dbov: u8,
    /// Time constant of the score's average.
    pub smoothing: Duration,
    /// Score at which a participant starts speaking.
    pub start: f64,
    /// Score below which a speaker may stop, once it has stayed there for `hold`.
    pub stop: f64,
    pub hold: Duration,
    /// Lead a challenger's score needs over the first speaker's to take first place.
    pub switch_margin: f64,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            speech_dbov: 50,
            smoothing: Duration::from_millis(400),
            start: 0.4,
            stop: 0.15,
            hold: Duration::from_millis(1500),
            switch_margin: 0.15,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Talker {
    score: f64,
    /// When the score was last brought up to date.
    updated: Instant,
    speaking: bool,
    /// Since when a speaker's score has been below `stop`.
    quiet_since: Option<Instant>,
}

/// The active speakers of one room.
#[derive(Debug)]
pub struct SpeakerDetector {
    config: SpeakerConfig,
    talkers: HashMap<ParticipantId, Talker>,
    /// The list as last reported.
    reported: Vec<ParticipantId>,
    changed: bool,
}

impl SpeakerDetector {
    pub fn new(config: SpeakerConfig) -> Self {
        Self {
            config,
            talkers: HashMap::new(),
            reported: Vec::new(),
            changed: false,
        }
    }

    /// A packet of `participant`'s audio arrived at `now` with `level` (packets without a
    /// level say nothing about speech and are not passed here).
    pub fn observe(&mut self, participant: ParticipantId, level: AudioLevel, now: Instant) {
        let speech = level.level <= self.config.speech_dbov && level.voice;
        self.observe_speech(participant, u16::from(speech), now);
    }

    /// `packets` packets of speech from `participant` arrived in the interval ending `now`
    /// (what [`observe`](Self::observe) does for each, in one step).
    pub fn observe_speech(&mut self, participant: ParticipantId, packets: u16, now: Instant) {
        let config = self.config;
        let talker = self.talkers.entry(participant).or_insert(Talker {
            score: 0.0,
            updated: now,
            speaking: false,
            quiet_since: None,
        });
        decay(talker, now, &config);
        talker.score = (talker.score + f64::from(packets) * weight(PACKET_TIME, &config)).min(1.0);
        self.update(now);
    }

    /// `participant` left the room: it is no longer a speaker, at once.
    pub fn remove(&mut self, participant: ParticipantId) {
        if self.talkers.remove(&participant).is_some() {
            self.update_order();
        }
    }

    /// Time passed: scores decay, speakers quiet for long enough stop.
    pub fn handle_timeout(&mut self, now: Instant) {
        let config = self.config;
        for talker in self.talkers.values_mut() {
            decay(talker, now, &config);
        }
        self.update(now);
    }

    /// The ordered list of speakers, when it changed since the last call.
    pub fn poll_speakers(&mut self) -> Option<Vec<ParticipantId>> {
        std::mem::take(&mut self.changed).then(|| self.reported.clone())
    }

    /// The current list (loudest first).
    pub fn speakers(&self) -> &[ParticipantId] {
        &self.reported
    }

    fn update(&mut self, now: Instant) {
        let config = self.config;
        for talker in self.talkers.values_mut() {
            if !talker.speaking {
                talker.speaking = talker.score >= config.start;
                talker.quiet_since = None;
            } else if talker.score >= config.stop {
                talker.quiet_since = None;
            } else {
                let since = *talker.quiet_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= config.hold {
                    talker.speaking = false;
                    talker.quiet_since = None;
                }
            }
        }
        self.talkers.retain(|_, t| t.speaking || t.score > 1e-3);
        self.update_order();
    }

    /// Recompute the list; note a change of membership or of the first place.
    fn update_order(&mut self) {
        let score = |p: &ParticipantId| self.talkers.get(p).map_or(0.0, |t| t.score);
        let mut list: Vec<ParticipantId> = self
            .talkers
            .iter()
            .filter(|(_, t)| t.speaking)
            .map(|(p, _)| *p)
            .collect();
        // Loudest first; ties by id, so the order never depends on the map's.
        list.sort_by(|a, b| score(b).total_cmp(&score(a)).then(a.0.cmp(&b.0)));
        // The first place changes hands only by a margin.
        if let Some(&first) = self.reported.first() {
            if let Some(pos) = list.iter().position(|p| *p == first) {
                let leader = list[0];
                if pos != 0 && score(&leader) < score(&first) + self.config.switch_margin {
                    list.remove(pos);
                    list.insert(0, first);
                }
            }
        }
        let membership_changed = {
            let mut a = list.clone();
            let mut b = self.reported.clone();
            a.sort_by_key(|p| p.0);
            b.sort_by_key(|p| p.0);
            a != b
        };
        // Same speakers and first place: the new order is kept without a report.
        if membership_changed || list.first() != self.reported.first() {
            self.changed = true;
        }
        self.reported = list;
    }
}

/// Weight of a step of `dt` in the exponential average.
fn weight(dt: Duration, config: &SpeakerConfig) -> f64 {
    let tau = config.smoothing.as_secs_f64().max(1e-3);
    1.0 - (-dt.as_secs_f64() / tau).exp()
}

/// Bring `talker`'s score to `now`: time without speech pulls it toward 0.
fn decay(talker: &mut Talker, now: Instant, config: &SpeakerConfig) {
    let dt = now.saturating_duration_since(talker.updated);
    talker.score *= 1.0 - weight(dt, config);
    talker.updated = now.max(talker.updated);
}

/// How often a worker sends its publishers' speech to the worker that ranks the room, and how
/// often that worker brings its rankings up to date.
pub const SPEECH_INTERVAL: Duration = Duration::from_millis(100);

/// A ranked room forgets its detector after this long without speech from anyone.
const IDLE_ROOM: Duration = Duration::from_secs(10);

/// The worker that ranks `room`'s speakers: every worker sends it its publishers' speech.
pub fn ranking_worker(room: RoomKey, workers: usize) -> WorkerId {
    WorkerId((room.0 as usize % workers.max(1)) as u16)
}

/// Speech of one audio track over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechSample {
    pub participant: ParticipantId,
    pub track: TrackId,
    /// Packets of speech in the interval.
    pub packets: u16,
}

/// Speech of one room's tracks published on a worker, for the room's ranking worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechReport {
    pub room: RoomKey,
    pub room_id: RoomId,
    pub samples: Vec<SpeechSample>,
}

/// A worker's publishers' speech since the last interval, per room. Only speech is kept: a
/// silent room sends nothing.
#[derive(Debug, Default)]
pub struct SpeechWindow {
    rooms: HashMap<RoomKey, SpeechReport>,
}

impl SpeechWindow {
    /// One packet of speech on `track`.
    pub fn record(
        &mut self,
        room: RoomKey,
        room_id: &RoomId,
        participant: ParticipantId,
        track: TrackId,
    ) {
        let report = self.rooms.entry(room).or_insert_with(|| SpeechReport {
            room,
            room_id: room_id.clone(),
            samples: Vec::new(),
        });
        match report.samples.iter_mut().find(|s| s.track == track) {
            Some(sample) => sample.packets = sample.packets.saturating_add(1),
            None => report.samples.push(SpeechSample {
                participant,
                track,
                packets: 1,
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The interval's reports; the window starts empty again.
    pub fn take(&mut self) -> impl Iterator<Item = SpeechReport> + '_ {
        self.rooms.drain().map(|(_, report)| report)
    }
}

/// One room ranked on this worker.
#[derive(Debug)]
struct Ranked {
    room_id: RoomId,
    detector: SpeakerDetector,
    /// Each talker's audio track (what control is told).
    tracks: HashMap<ParticipantId, TrackId>,
    last_speech: Instant,
}

/// The rooms whose speakers this worker ranks ([`ranking_worker`]): speech reports in,
/// [`NodeEvent::Speakers`] out when a room's list changes.
#[derive(Debug, Default)]
pub struct SpeakerBoard {
    config: SpeakerConfig,
    rooms: HashMap<RoomKey, Ranked>,
}

impl SpeakerBoard {
    pub fn new(config: SpeakerConfig) -> Self {
        Self {
            config,
            rooms: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Whether a packet at `level` is speech.
    pub fn is_speech(&self, level: AudioLevel) -> bool {
        level.level <= self.config.speech_dbov && level.voice
    }

    pub fn observe(&mut self, report: SpeechReport, now: Instant) {
        let config = self.config;
        let ranked = self.rooms.entry(report.room).or_insert_with(|| Ranked {
            room_id: report.room_id,
            detector: SpeakerDetector::new(config),
            tracks: HashMap::new(),
            last_speech: now,
        });
        ranked.last_speech = now;
        for sample in report.samples {
            ranked.tracks.insert(sample.participant, sample.track);
            ranked
                .detector
                .observe_speech(sample.participant, sample.packets, now);
        }
    }

    /// Track `track` of `room` ended: its participant stops being a speaker at once.
    pub fn forget_track(&mut self, room: RoomKey, track: TrackId) {
        let Some(ranked) = self.rooms.get_mut(&room) else {
            return;
        };
        let gone: Vec<ParticipantId> = ranked
            .tracks
            .iter()
            .filter(|(_, t)| **t == track)
            .map(|(p, _)| *p)
            .collect();
        for participant in gone {
            ranked.tracks.remove(&participant);
            ranked.detector.remove(participant);
        }
    }

    /// The current speakers of `room`, loudest first, if this board ranks it.
    pub fn speakers(&self, room: RoomKey) -> Option<&[ParticipantId]> {
        self.rooms.get(&room).map(|r| r.detector.speakers())
    }

    /// Bring every ranking to `now`; the rooms whose list changed, as events for control and
    /// as the new lists (for the room's workers). Rooms silent for a while with nobody
    /// speaking are forgotten.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        events: &mut impl Extend<NodeEvent>,
    ) -> Vec<(RoomKey, Vec<ParticipantId>)> {
        let mut changed = Vec::new();
        for (&key, ranked) in self.rooms.iter_mut() {
            ranked.detector.handle_timeout(now);
            if let Some(list) = ranked.detector.poll_speakers() {
                let speakers = list
                    .iter()
                    .filter_map(|p| ranked.tracks.get(p).copied())
                    .collect();
                events.extend([NodeEvent::Speakers {
                    room: ranked.room_id.clone(),
                    speakers,
                }]);
                changed.push((key, list));
            }
        }
        self.rooms.retain(|_, r| {
            !r.detector.speakers().is_empty()
                || now.saturating_duration_since(r.last_speech) < IDLE_ROOM
        });
        changed
    }
}

#[cfg(test)]
// Tests take a real instant as the origin of their simulated time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SPEECH: AudioLevel = AudioLevel {
        level: 30,
        voice: true,
    };
    const QUIET: AudioLevel = AudioLevel {
        level: 90,
        voice: false,
    };
    const PACKET: Duration = Duration::from_millis(20);

    fn p(n: u64) -> ParticipantId {
        ParticipantId(n)
    }

    /// Drives a detector on simulated time, one 20 ms packet step at a time, recording every
    /// reported list with its time.
    struct Script {
        d: SpeakerDetector,
        t0: Instant,
        now: Instant,
        reports: Vec<(Duration, Vec<ParticipantId>)>,
    }

    impl Script {
        fn new() -> Self {
            let t0 = Instant::now();
            Self {
                d: SpeakerDetector::new(SpeakerConfig::default()),
                t0,
                now: t0,
                reports: Vec::new(),
            }
        }

        /// `duration` of packets, each participant sending `level` (None: no packet, DTX).
        fn run(&mut self, duration: Duration, who: &[(u64, Option<AudioLevel>)]) {
            let steps = duration.as_millis() / PACKET.as_millis();
            for _ in 0..steps {
                self.now += PACKET;
                for &(n, level) in who {
                    if let Some(level) = level {
                        self.d.observe(p(n), level, self.now);
                    }
                }
                self.d.handle_timeout(self.now);
                if let Some(list) = self.d.poll_speakers() {
                    self.reports.push((self.now - self.t0, list));
                }
            }
        }

        fn list(&self) -> Vec<u64> {
            self.d.speakers().iter().map(|p| p.0).collect()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn silence_and_quiet_audio_have_no_speakers() {
        let mut s = Script::new();
        s.run(ms(3000), &[(1, Some(QUIET)), (2, None)]);
        assert!(s.reports.is_empty());
        assert!(s.list().is_empty());
    }

    #[test]
    fn steady_speech_makes_a_speaker_after_a_short_onset_reported_once() {
        let mut s = Script::new();
        s.run(ms(3000), &[(1, Some(SPEECH))]);
        assert_eq!(s.reports.len(), 1, "{:?}", s.reports);
        let (at, list) = &s.reports[0];
        assert_eq!(list, &vec![p(1)]);
        // The score needs about half a time constant of speech.
        assert!(
            *at >= ms(150) && *at <= ms(400),
            "became a speaker at {at:?}"
        );
    }

    #[test]
    fn a_cough_does_not_make_a_speaker() {
        let mut s = Script::new();
        s.run(ms(1000), &[(1, Some(QUIET))]);
        s.run(ms(120), &[(1, Some(SPEECH))]);
        s.run(ms(2000), &[(1, Some(QUIET))]);
        assert!(s.reports.is_empty(), "{:?}", s.reports);
    }

    #[test]
    fn pauses_keep_a_speaker_and_long_silence_ends_it_after_the_hold() {
        let mut s = Script::new();
        s.run(ms(2000), &[(1, Some(SPEECH))]);
        // Pauses between sentences (DTX: no packets at all).
        for _ in 0..3 {
            s.run(ms(600), &[(1, None)]);
            s.run(ms(800), &[(1, Some(SPEECH))]);
        }
        assert_eq!(s.reports.len(), 1, "{:?}", s.reports);
        assert_eq!(s.list(), vec![1]);
        let stopped = s.now - s.t0;
        s.run(ms(5000), &[(1, None)]);
        assert_eq!(s.reports.len(), 2, "{:?}", s.reports);
        let (at, list) = &s.reports[1];
        assert!(list.is_empty());
        // The score falls below `stop` within about 2 time constants, then the hold.
        let after = *at - stopped;
        assert!(
            after >= ms(1500) && after <= ms(2800),
            "stopped {after:?} after the speech"
        );
    }

    #[test]
    fn the_first_place_changes_only_to_a_clearly_louder_talker() {
        let mut s = Script::new();
        s.run(ms(2000), &[(1, Some(SPEECH))]);
        // 2 joins in: both speak; 1 keeps first place (equal scores, no margin).
        s.run(ms(2000), &[(1, Some(SPEECH)), (2, Some(SPEECH))]);
        assert_eq!(s.list(), vec![1, 2]);
        // 1 pauses briefly: still first (its score has not fallen by the margin yet).
        s.run(ms(40), &[(1, None), (2, Some(SPEECH))]);
        assert_eq!(s.list()[0], 1);
        // 1 stops for good, 2 goes on: 2 takes first place, then 1 leaves the list.
        s.run(ms(4000), &[(1, None), (2, Some(SPEECH))]);
        assert_eq!(s.list(), vec![2]);
        let firsts: Vec<u64> = s
            .reports
            .iter()
            .filter_map(|(_, l)| l.first().map(|p| p.0))
            .collect();
        assert_eq!(firsts, vec![1, 1, 2, 2], "{:?}", s.reports);
    }

    #[test]
    fn a_participant_who_leaves_is_no_longer_a_speaker_at_once() {
        let mut s = Script::new();
        s.run(ms(2000), &[(1, Some(SPEECH)), (2, Some(SPEECH))]);
        s.d.remove(p(1));
        assert_eq!(s.d.poll_speakers(), Some(vec![p(2)]));
        s.d.remove(p(7));
        assert_eq!(s.d.poll_speakers(), None);
    }

    proptest! {
        /// Any sequence of levels, gaps and departures: no panic, no participant twice in
        /// the list, a report only when the list's members or first place changed.
        #[test]
        fn any_sequence_gives_a_consistent_list(
            steps in proptest::collection::vec(
                (0u64..4, any::<u8>(), any::<bool>(), 0u64..200, any::<bool>()),
                0..400,
            )
        ) {
            let t0 = Instant::now();
            let mut d = SpeakerDetector::new(SpeakerConfig::default());
            let mut now = t0;
            let mut last: Vec<ParticipantId> = Vec::new();
            for (who, level, voice, gap_ms, leave) in steps {
                now += Duration::from_millis(gap_ms);
                if leave {
                    d.remove(p(who));
                } else {
                    d.observe(p(who), AudioLevel { level: level.min(127), voice }, now);
                }
                d.handle_timeout(now);
                let mut seen = d.speakers().to_vec();
                seen.sort_by_key(|p| p.0);
                seen.dedup();
                prop_assert_eq!(seen.len(), d.speakers().len());
                if let Some(list) = d.poll_speakers() {
                    let mut a = list.clone();
                    let mut b = last.clone();
                    a.sort_by_key(|p| p.0);
                    b.sort_by_key(|p| p.0);
                    prop_assert!(a != b || list.first() != last.first(), "{:?} -> {:?}", last, list);
                    last = list;
                }
            }
        }
    }
}
