//! What a load run does: rooms × publishers × subscribers, the media they send, how fast they
//! join, how they churn, and the criteria the run must meet. Built from flags or a TOML file:
//! both are parsed into a [`ScenarioPatch`], applied over the defaults (file first, then flags),
//! and the result is checked by [`Scenario::validate`], whose errors name the offending key.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::media;

/// The media each publisher sends (and so each subscriber receives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediaModel {
    /// Opus-like audio only: 20 ms packets.
    Audio,
    /// One video stream, no audio.
    Video,
    /// Audio plus one video stream.
    AudioVideo,
    /// Three simulcast layers (rid q/h/f), no audio.
    VideoSimulcast,
    /// Audio plus three simulcast layers.
    AudioVideoSimulcast,
}

impl MediaModel {
    pub const ALL: [MediaModel; 5] = [
        MediaModel::Audio,
        MediaModel::Video,
        MediaModel::AudioVideo,
        MediaModel::VideoSimulcast,
        MediaModel::AudioVideoSimulcast,
    ];

    pub fn has_audio(self) -> bool {
        matches!(
            self,
            MediaModel::Audio | MediaModel::AudioVideo | MediaModel::AudioVideoSimulcast
        )
    }

    pub fn has_video(self) -> bool {
        !matches!(self, MediaModel::Audio)
    }

    pub fn simulcast(self) -> bool {
        matches!(
            self,
            MediaModel::VideoSimulcast | MediaModel::AudioVideoSimulcast
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MediaModel::Audio => "audio",
            MediaModel::Video => "video",
            MediaModel::AudioVideo => "audio-video",
            MediaModel::VideoSimulcast => "video-simulcast",
            MediaModel::AudioVideoSimulcast => "audio-video-simulcast",
        }
    }
}

impl fmt::Display for MediaModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MediaModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MediaModel::ALL
            .into_iter()
            .find(|m| m.as_str() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = MediaModel::ALL.iter().map(|m| m.as_str()).collect();
                format!(
                    "\"{s}\" is not a media model (one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// The signaling dialect spoken to the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolKind {
    /// WHIP to publish, WHEP to subscribe.
    Whip,
    /// Janus VideoRoom over its HTTP JSON API.
    Janus,
    /// Our WebSocket room protocol (docs/signaling.md): meetings where every participant
    /// publishes and receives every other.
    Room,
}

impl ProtocolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolKind::Whip => "whip",
            ProtocolKind::Janus => "janus",
            ProtocolKind::Room => "room",
        }
    }
}

impl fmt::Display for ProtocolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProtocolKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "whip" | "whep" | "whip-whep" => Ok(ProtocolKind::Whip),
            "janus" => Ok(ProtocolKind::Janus),
            "room" => Ok(ProtocolKind::Room),
            _ => Err(format!(
                "\"{s}\" is not a protocol (one of: whip, janus, room)"
            )),
        }
    }
}

/// Pass criteria; a run that misses any of them exits non-zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criteria {
    /// Highest acceptable loss, percent of expected packets.
    pub max_loss_pct: Option<f64>,
    /// Highest acceptable p99 one-way latency, microseconds.
    pub max_p99_us: Option<u64>,
    /// Lowest acceptable share of planned peers that connected, percent.
    pub min_connected_pct: Option<f64>,
    /// Room protocol: fewest remote tracks that must have delivered media, over all
    /// participants. `None`: every expected stream ([`Scenario::expected_streams`]).
    #[serde(default)]
    pub min_streams: Option<u64>,
}

/// A whole load run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Base URL of the server under test (`http://127.0.0.1:8080`).
    pub url: String,
    pub protocol: ProtocolKind,
    pub rooms: u32,
    /// Room names are `{room_prefix}{index}`.
    pub room_prefix: String,
    /// Publishers per room.
    pub publishers: u32,
    /// Subscribers per room.
    pub subscribers: u32,
    pub media: MediaModel,
    /// How long media is measured once ramp-up has finished, seconds.
    pub duration_s: f64,
    /// Peers started per second during ramp-up.
    pub ramp_per_s: f64,
    /// Subscribers that leave and rejoin per second while measuring (0: no churn).
    pub churn_per_s: f64,
    /// Video bitrate of the top (or only) layer, kbit/s. With [`target_pps`](Self::target_pps)
    /// this is the bitrate chosen to meet it.
    pub video_kbps: u32,
    pub video_fps: u32,
    /// Audio sends silence-suppression pauses (DTX).
    pub audio_dtx: bool,
    /// Media threads of the generator (0: one per available core).
    pub threads: u32,
    /// How long a peer may take from POST to connected media before it counts as failed, seconds.
    pub connect_timeout_s: f64,
    pub criteria: Criteria,
    /// Media packets per second all publishers together should send; sets
    /// [`video_kbps`](Self::video_kbps). `None`: the bitrate is given directly.
    #[serde(default)]
    pub target_pps: Option<f64>,
    /// Seconds between periodic video keyframes (keyframes requested by the server come on top).
    #[serde(default = "default_keyframe_interval_s")]
    pub keyframe_interval_s: f64,
    /// Asked for on publishers' and subscribers' offers (`?region=NAME` on WHIP / WHEP): the
    /// server places them on a node of that region when it can (docs/cascade.md).
    #[serde(default)]
    pub publisher_region: Option<String>,
    #[serde(default)]
    pub subscriber_region: Option<String>,
    /// Room protocol: participants per room, each publishing and receiving all the others
    /// (`publishers` and `subscribers` do not apply). 0 for the other protocols.
    #[serde(default)]
    pub participants: u32,
    /// Room protocol: each room is a push-to-talk channel (docs/push-to-talk.md).
    #[serde(default)]
    pub ptt: Option<PttPlan>,
}

/// A push-to-talk run: in each room the first `talkers` participants take the floor in turn,
/// every `floor_change_s`; every participant listens to the talkers only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PttPlan {
    pub talkers: u32,
    pub floor_change_s: f64,
}

impl Default for PttPlan {
    fn default() -> Self {
        Self {
            talkers: 3,
            floor_change_s: 2.0,
        }
    }
}

fn default_keyframe_interval_s() -> f64 {
    3.0
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            url: "http://127.0.0.1:8080".into(),
            protocol: ProtocolKind::Whip,
            rooms: 1,
            room_prefix: "load-".into(),
            publishers: 1,
            subscribers: 10,
            media: MediaModel::AudioVideo,
            duration_s: 30.0,
            ramp_per_s: 20.0,
            churn_per_s: 0.0,
            video_kbps: 1000,
            video_fps: 30,
            audio_dtx: false,
            threads: 0,
            connect_timeout_s: 20.0,
            criteria: Criteria::default(),
            target_pps: None,
            keyframe_interval_s: default_keyframe_interval_s(),
            publisher_region: None,
            subscriber_region: None,
            participants: 0,
            ptt: None,
        }
    }
}

/// Most peers one run may plan: each needs a UDP port and a file descriptor.
pub const MAX_PEERS: u64 = 50_000;

/// A scenario setting that is out of range or inconsistent. `key` is the TOML key, which is
/// also the flag's name (`rooms` ↔ `--rooms`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ScenarioError {
    pub key: &'static str,
    pub message: String,
}

impl ScenarioError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

impl Scenario {
    /// Peers the scenario plans, all rooms together. A room participant is two peers: its
    /// publisher and its subscriber connection.
    pub fn planned_peers(&self) -> u64 {
        self.total_publishers() + self.total_subscribers()
    }

    pub fn total_publishers(&self) -> u64 {
        u64::from(self.rooms) * u64::from(self.publishers_per_room())
    }

    pub fn total_subscribers(&self) -> u64 {
        u64::from(self.rooms) * u64::from(self.subscribers_per_room())
    }

    /// Publishing connections per room: every participant's in room mode.
    pub fn publishers_per_room(&self) -> u32 {
        match self.protocol {
            ProtocolKind::Room => self.participants,
            _ => self.publishers,
        }
    }

    /// Receiving connections per room: every participant's in room mode.
    pub fn subscribers_per_room(&self) -> u32 {
        match self.protocol {
            ProtocolKind::Room => self.participants,
            _ => self.subscribers,
        }
    }

    /// Room protocol: all participants of all rooms.
    pub fn total_participants(&self) -> u64 {
        match self.protocol {
            ProtocolKind::Room => u64::from(self.rooms) * u64::from(self.participants),
            _ => 0,
        }
    }

    /// Room protocol: remote tracks each participant should receive (every other
    /// participant's audio and video, as the media model has them).
    /// In a push-to-talk run, the talkers' audio only, each talker's own excepted: the fewest
    /// any participant (a talker) receives.
    pub fn streams_per_participant(&self) -> u64 {
        if let Some(ptt) = &self.ptt {
            return u64::from(ptt.talkers.saturating_sub(1));
        }
        let kinds = u64::from(self.media.has_audio()) + u64::from(self.media.has_video());
        u64::from(self.participants.saturating_sub(1)) * kinds
    }

    /// Room protocol: remote tracks all participants together should receive,
    /// `rooms × N × (N − 1) × kinds`; push to talk: `rooms × (N × K − K)` for K talkers.
    pub fn expected_streams(&self) -> u64 {
        if let Some(ptt) = &self.ptt {
            let k = u64::from(ptt.talkers);
            return u64::from(self.rooms) * (u64::from(self.participants) * k - k);
        }
        self.total_participants() * self.streams_per_participant()
    }

    /// The room name of room `index`.
    pub fn room_name(&self, index: u32) -> String {
        format!("{}{index}", self.room_prefix)
    }

    /// Checks every setting; the first problem found is returned, naming its key.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let url = self.url.trim();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                ScenarioError::new(
                    "url",
                    format!("\"{url}\" is not an http:// or https:// URL"),
                )
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(ScenarioError::new("url", format!("\"{url}\" has no host")));
        }
        if self.rooms == 0 {
            return Err(ScenarioError::new("rooms", "must be at least 1"));
        }
        self.validate_room()?;
        if self.publishers_per_room() == 0 && self.subscribers_per_room() == 0 {
            return Err(ScenarioError::new(
                "publishers",
                "a room needs at least one publisher or subscriber",
            ));
        }
        if self.planned_peers() > MAX_PEERS {
            return Err(ScenarioError::new(
                "rooms",
                format!(
                    "{} rooms × ({} publishers + {} subscribers) = {} peers, more than the {MAX_PEERS} one generator runs",
                    self.rooms,
                    self.publishers_per_room(),
                    self.subscribers_per_room(),
                    self.planned_peers()
                ),
            ));
        }
        for (key, region) in [
            ("publisher-region", &self.publisher_region),
            ("subscriber-region", &self.subscriber_region),
        ] {
            if let Some(region) = region {
                if self.protocol != ProtocolKind::Whip {
                    return Err(ScenarioError::new(
                        key,
                        "regions are a WHIP / WHEP query; the janus protocol has none",
                    ));
                }
                if region.is_empty()
                    || region.len() > 64
                    || !region
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(ScenarioError::new(
                        key,
                        format!("\"{region}\" must be 1-64 letters, digits, '-', '_' or '.'"),
                    ));
                }
            }
        }
        if self.room_prefix.is_empty()
            || !self
                .room_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ScenarioError::new(
                "room-prefix",
                format!(
                    "\"{}\" must be non-empty and use only letters, digits, '-', '_' and '.'",
                    self.room_prefix
                ),
            ));
        }
        positive("duration", self.duration_s, 7.0 * 86_400.0)?;
        positive("ramp", self.ramp_per_s, 100_000.0)?;
        if !(self.churn_per_s.is_finite() && self.churn_per_s >= 0.0) {
            return Err(ScenarioError::new(
                "churn",
                "must be zero or a positive rate like 2/s",
            ));
        }
        if self.churn_per_s > 0.0 && self.subscribers_per_room() == 0 {
            return Err(ScenarioError::new(
                "churn",
                "churn makes subscribers leave and rejoin, but there are no subscribers",
            ));
        }
        if !(30..=50_000).contains(&self.video_kbps) {
            return Err(ScenarioError::new(
                "video-kbps",
                format!("{} is outside 30..=50000", self.video_kbps),
            ));
        }
        if !(1..=60).contains(&self.video_fps) {
            return Err(ScenarioError::new(
                "fps",
                format!("{} is outside 1..=60", self.video_fps),
            ));
        }
        if self.threads > 1024 {
            return Err(ScenarioError::new(
                "threads",
                format!("{} is more than 1024", self.threads),
            ));
        }
        positive("connect-timeout", self.connect_timeout_s, 3600.0)?;
        positive("keyframe-interval", self.keyframe_interval_s, 3600.0)?;
        if let Some(pps) = self.target_pps {
            positive("target-pps", pps, 100_000_000.0)?;
            if !self.media.has_video() {
                return Err(ScenarioError::new(
                    "target-pps",
                    "sets the video bitrate, but the media model has no video",
                ));
            }
            if self.publishers_per_room() == 0 {
                return Err(ScenarioError::new(
                    "target-pps",
                    "sets what publishers send, but there are no publishers",
                ));
            }
        }
        let c = &self.criteria;
        if let Some(loss) = c.max_loss_pct {
            percent("max-loss", loss)?;
        }
        if let Some(connected) = c.min_connected_pct {
            percent("min-connected", connected)?;
        }
        if c.max_p99_us == Some(0) {
            return Err(ScenarioError::new("max-p99", "must be more than 0"));
        }
        Ok(())
    }

    /// The settings that only the room protocol has, or that it does not have.
    fn validate_room(&self) -> Result<(), ScenarioError> {
        if let Some(ptt) = &self.ptt {
            if self.protocol != ProtocolKind::Room {
                return Err(ScenarioError::new(
                    "ptt",
                    "push-to-talk runs use --protocol room",
                ));
            }
            if self.media != MediaModel::Audio {
                return Err(ScenarioError::new(
                    "ptt",
                    "push-to-talk runs are audio only (--media audio)",
                ));
            }
            if ptt.talkers < 2 || ptt.talkers > self.participants {
                return Err(ScenarioError::new(
                    "talkers",
                    format!(
                        "{} talkers: the floor needs at least 2 to pass between, and at most --participants ({})",
                        ptt.talkers, self.participants
                    ),
                ));
            }
            if !(ptt.floor_change_s.is_finite() && ptt.floor_change_s >= 0.2) {
                return Err(ScenarioError::new(
                    "floor-change",
                    "must be at least 200ms (a floor change is a signaling round trip)",
                ));
            }
        }
        if self.protocol != ProtocolKind::Room {
            if self.participants != 0 {
                return Err(ScenarioError::new(
                    "participants",
                    "applies to --protocol room only (whip and janus take --publishers and --subscribers)",
                ));
            }
            if self.criteria.min_streams.is_some() {
                return Err(ScenarioError::new(
                    "min-streams",
                    "counts room participants' streams: --protocol room only",
                ));
            }
            return Ok(());
        }
        if self.participants < 2 {
            return Err(ScenarioError::new(
                "participants",
                format!(
                    "{} participants: a room run needs at least 2 (everyone receives everyone else)",
                    self.participants
                ),
            ));
        }
        if self.churn_per_s > 0.0 {
            return Err(ScenarioError::new(
                "churn",
                "participants of a room run do not churn",
            ));
        }
        if !self.url.trim().starts_with("http://") {
            return Err(ScenarioError::new(
                "url",
                "the room protocol's WebSocket is reached over http:// only (no TLS)",
            ));
        }
        if let Some(min) = self.criteria.min_streams {
            let expected = self.expected_streams();
            if min > expected {
                return Err(ScenarioError::new(
                    "min-streams",
                    format!("{min} is more than the {expected} streams the rooms can deliver"),
                ));
            }
        }
        Ok(())
    }

    /// With [`target_pps`](Self::target_pps) set, chooses the video bitrate that makes all
    /// publishers together send about that many packets per second (see
    /// [`media::kbps_for_target_pps`]). Returns a note when the target cannot be met exactly.
    pub fn resolve_target_pps(&mut self) -> Option<String> {
        let target = self.target_pps?;
        let publishers = self.total_publishers();
        if publishers == 0 || !self.media.has_video() {
            return None;
        }
        let per_publisher = target / publishers as f64;
        let solved = media::kbps_for_target_pps(
            self.media,
            self.video_fps,
            self.keyframe_interval_s,
            self.audio_dtx,
            per_publisher,
        );
        self.video_kbps = solved.kbps;
        solved.note.map(|note| {
            format!(
                "target-pps {target:.0}: {note}; using video-kbps {} ({:.0} pps in all)",
                solved.kbps,
                solved.pps * publishers as f64
            )
        })
    }
}

fn positive(key: &'static str, value: f64, max: f64) -> Result<(), ScenarioError> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(())
    } else {
        Err(ScenarioError::new(
            key,
            format!("{value} must be more than 0 and at most {max}"),
        ))
    }
}

fn percent(key: &'static str, value: f64) -> Result<(), ScenarioError> {
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(ScenarioError::new(
            key,
            format!("{value}% is outside 0%..=100%"),
        ))
    }
}

/// Scenario settings given explicitly (by a file or by flags); `None` keeps what is underneath.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScenarioPatch {
    pub url: Option<String>,
    pub protocol: Option<ProtocolKind>,
    pub rooms: Option<u32>,
    pub room_prefix: Option<String>,
    pub publishers: Option<u32>,
    pub subscribers: Option<u32>,
    pub media: Option<MediaModel>,
    pub duration_s: Option<f64>,
    pub ramp_per_s: Option<f64>,
    pub churn_per_s: Option<f64>,
    pub target_pps: Option<f64>,
    pub video_kbps: Option<u32>,
    pub video_fps: Option<u32>,
    pub keyframe_interval_s: Option<f64>,
    pub audio_dtx: Option<bool>,
    pub threads: Option<u32>,
    pub connect_timeout_s: Option<f64>,
    pub max_loss_pct: Option<f64>,
    pub max_p99_us: Option<u64>,
    pub min_connected_pct: Option<f64>,
    pub min_streams: Option<u64>,
    pub publisher_region: Option<String>,
    pub subscriber_region: Option<String>,
    pub participants: Option<u32>,
    /// Push to talk (with `talkers` and `floor_change_s`, defaults 3 and 2 s).
    pub ptt: Option<bool>,
    pub talkers: Option<u32>,
    pub floor_change_s: Option<f64>,
    /// Legend in reports (not part of the scenario itself).
    pub label: Option<String>,
}

impl ScenarioPatch {
    /// Writes every given setting into `s`.
    pub fn apply(&self, s: &mut Scenario) {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        set(&mut s.url, &self.url);
        set(&mut s.protocol, &self.protocol);
        set(&mut s.rooms, &self.rooms);
        set(&mut s.room_prefix, &self.room_prefix);
        set(&mut s.publishers, &self.publishers);
        set(&mut s.subscribers, &self.subscribers);
        set(&mut s.media, &self.media);
        set(&mut s.duration_s, &self.duration_s);
        set(&mut s.ramp_per_s, &self.ramp_per_s);
        set(&mut s.churn_per_s, &self.churn_per_s);
        if self.target_pps.is_some() {
            s.target_pps = self.target_pps;
        }
        set(&mut s.video_kbps, &self.video_kbps);
        set(&mut s.video_fps, &self.video_fps);
        set(&mut s.keyframe_interval_s, &self.keyframe_interval_s);
        set(&mut s.audio_dtx, &self.audio_dtx);
        set(&mut s.threads, &self.threads);
        set(&mut s.connect_timeout_s, &self.connect_timeout_s);
        set(&mut s.participants, &self.participants);
        match self.ptt {
            Some(false) => s.ptt = None,
            Some(true) => {
                s.ptt.get_or_insert_with(PttPlan::default);
            }
            None => {}
        }
        if let Some(ptt) = s.ptt.as_mut() {
            set(&mut ptt.talkers, &self.talkers);
            set(&mut ptt.floor_change_s, &self.floor_change_s);
        }
        if self.publisher_region.is_some() {
            s.publisher_region = self.publisher_region.clone();
        }
        if self.subscriber_region.is_some() {
            s.subscriber_region = self.subscriber_region.clone();
        }
        if self.max_loss_pct.is_some() {
            s.criteria.max_loss_pct = self.max_loss_pct;
        }
        if self.max_p99_us.is_some() {
            s.criteria.max_p99_us = self.max_p99_us;
        }
        if self.min_connected_pct.is_some() {
            s.criteria.min_connected_pct = self.min_connected_pct;
        }
        if self.min_streams.is_some() {
            s.criteria.min_streams = self.min_streams;
        }
    }

    /// This patch with `over`'s settings taking precedence.
    pub fn overridden_by(mut self, over: &ScenarioPatch) -> ScenarioPatch {
        macro_rules! take {
            ($($f:ident),*) => {$(
                if over.$f.is_some() {
                    self.$f = over.$f.clone();
                }
            )*};
        }
        take!(
            url,
            protocol,
            rooms,
            room_prefix,
            publishers,
            subscribers,
            media,
            duration_s,
            ramp_per_s,
            churn_per_s,
            target_pps,
            video_kbps,
            video_fps,
            keyframe_interval_s,
            publisher_region,
            subscriber_region,
            audio_dtx,
            threads,
            connect_timeout_s,
            max_loss_pct,
            max_p99_us,
            min_connected_pct,
            min_streams,
            participants,
            ptt,
            talkers,
            floor_change_s,
            label
        );
        self
    }

    /// Parses a scenario file (TOML; keys are the flag names, see the tools README).
    pub fn from_toml(text: &str) -> Result<ScenarioPatch, String> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        file.into_patch()
    }

    /// Reads and parses a scenario file; errors name the file.
    pub fn from_file(path: &Path) -> Result<ScenarioPatch, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: ScenarioFile = toml::from_str(&text)
            .map_err(|e| format!("{}: {}", path.display(), toml_error(&text, &e)))?;
        file.into_patch()
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Builds the scenario: defaults, then this patch, then validation and the target packet
    /// rate. Returns the scenario and notes worth telling the operator.
    pub fn build(&self) -> Result<(Scenario, Vec<String>), ScenarioError> {
        let mut s = Scenario::default();
        self.apply(&mut s);
        if s.protocol == ProtocolKind::Room {
            for (key, given) in [
                ("publishers", self.publishers.is_some()),
                ("subscribers", self.subscribers.is_some()),
            ] {
                if given {
                    return Err(ScenarioError::new(
                        key,
                        "not with --protocol room: every participant publishes and subscribes (use --participants)",
                    ));
                }
            }
        }
        if s.ptt.is_none() {
            for (key, given) in [
                ("talkers", self.talkers.is_some()),
                ("floor-change", self.floor_change_s.is_some()),
            ] {
                if given {
                    return Err(ScenarioError::new(
                        key,
                        "applies to push-to-talk runs (--ptt) only",
                    ));
                }
            }
        }
        s.validate()?;
        let notes = s.resolve_target_pps().into_iter().collect();
        Ok((s, notes))
    }
}

/// A TOML error with the line it points at, which names the key: `line 3 (rooms = "ten"):
/// invalid type: string "ten", expected u32`.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    format!("line {line_no} ({line}): {}", e.message())
}

/// A number, or a string with a unit (`60s`, `20/s`, `1%`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(f64),
    Str(String),
}

impl NumOrStr {
    fn parse(
        &self,
        key: &'static str,
        parse: fn(&str) -> Result<f64, String>,
    ) -> Result<f64, String> {
        match self {
            NumOrStr::Num(n) => Ok(*n),
            NumOrStr::Str(s) => parse(s).map_err(|e| format!("{key}: {e}")),
        }
    }
}

/// The TOML file as written: keys are the flag names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ScenarioFile {
    url: Option<String>,
    protocol: Option<String>,
    rooms: Option<u32>,
    room_prefix: Option<String>,
    publishers: Option<u32>,
    subscribers: Option<u32>,
    media: Option<String>,
    /// Seconds, or `"60s"`, `"2m"`.
    duration: Option<NumOrStr>,
    /// Peers per second, or `"20/s"`.
    ramp: Option<NumOrStr>,
    churn: Option<NumOrStr>,
    target_pps: Option<f64>,
    video_kbps: Option<u32>,
    fps: Option<u32>,
    keyframe_interval: Option<NumOrStr>,
    dtx: Option<bool>,
    threads: Option<u32>,
    connect_timeout: Option<NumOrStr>,
    publisher_region: Option<String>,
    subscriber_region: Option<String>,
    participants: Option<u32>,
    ptt: Option<bool>,
    talkers: Option<u32>,
    floor_change: Option<NumOrStr>,
    label: Option<String>,
    criteria: Option<CriteriaFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CriteriaFile {
    /// Percent, or `"1%"`.
    max_loss: Option<NumOrStr>,
    /// Milliseconds, or `"50ms"`.
    max_p99: Option<NumOrStr>,
    min_connected: Option<NumOrStr>,
    min_streams: Option<u64>,
}

impl ScenarioFile {
    fn into_patch(self) -> Result<ScenarioPatch, String> {
        let criteria = self.criteria.unwrap_or_default();
        let max_p99_us = criteria
            .max_p99
            .map(|v| match v {
                NumOrStr::Num(ms) => {
                    if ms.is_finite() && ms > 0.0 {
                        Ok((ms * 1000.0).round() as u64)
                    } else {
                        Err(format!("criteria.max-p99: {ms} must be more than 0 ms"))
                    }
                }
                NumOrStr::Str(s) => {
                    parse_latency_us(&s).map_err(|e| format!("criteria.max-p99: {e}"))
                }
            })
            .transpose()?;
        Ok(ScenarioPatch {
            url: self.url,
            protocol: self
                .protocol
                .map(|p| p.parse().map_err(|e| format!("protocol: {e}")))
                .transpose()?,
            rooms: self.rooms,
            room_prefix: self.room_prefix,
            publisher_region: self.publisher_region,
            subscriber_region: self.subscriber_region,
            publishers: self.publishers,
            subscribers: self.subscribers,
            participants: self.participants,
            media: self
                .media
                .map(|m| m.parse().map_err(|e| format!("media: {e}")))
                .transpose()?,
            duration_s: self
                .duration
                .map(|v| v.parse("duration", parse_duration_s))
                .transpose()?,
            ramp_per_s: self
                .ramp
                .map(|v| v.parse("ramp", parse_rate_per_s))
                .transpose()?,
            churn_per_s: self
                .churn
                .map(|v| v.parse("churn", parse_rate_per_s))
                .transpose()?,
            target_pps: self.target_pps,
            video_kbps: self.video_kbps,
            video_fps: self.fps,
            keyframe_interval_s: self
                .keyframe_interval
                .map(|v| v.parse("keyframe-interval", parse_duration_s))
                .transpose()?,
            audio_dtx: self.dtx,
            threads: self.threads,
            connect_timeout_s: self
                .connect_timeout
                .map(|v| v.parse("connect-timeout", parse_duration_s))
                .transpose()?,
            max_loss_pct: criteria
                .max_loss
                .map(|v| v.parse("criteria.max-loss", parse_percent))
                .transpose()?,
            max_p99_us,
            min_connected_pct: criteria
                .min_connected
                .map(|v| v.parse("criteria.min-connected", parse_percent))
                .transpose()?,
            min_streams: criteria.min_streams,
            ptt: self.ptt,
            talkers: self.talkers,
            floor_change_s: self
                .floor_change
                .map(|v| v.parse("floor-change", parse_duration_s))
                .transpose()?,
            label: self.label,
        })
    }
}

/// Splits `"12.5ms"` into `(12.5, "ms")`.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let value: f64 = s[..end].parse().ok()?;
    value.is_finite().then_some((value, s[end..].trim()))
}

/// A duration in seconds: `60s`, `2m`, `1h`, `500ms`, or a bare number of seconds.
pub fn parse_duration_s(s: &str) -> Result<f64, String> {
    let err = || format!("\"{s}\" is not a duration (examples: 60s, 2m, 500ms)");
    let (value, unit) = split_number(s).ok_or_else(err)?;
    let scale = match unit {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    Ok(value * scale)
}

/// A rate per second: `20/s`, `1200/min`, `20/m`, or a bare number per second.
pub fn parse_rate_per_s(s: &str) -> Result<f64, String> {
    let err = || format!("\"{s}\" is not a rate (examples: 20/s, 600/min)");
    let (value, unit) = split_number(s).ok_or_else(err)?;
    let per = match unit.trim_start_matches('/').trim() {
        "" | "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    if unit.is_empty() || unit.starts_with('/') {
        Ok(value / per)
    } else {
        Err(err())
    }
}

/// A percentage: `1%`, `0.5%`, or a bare number of percent.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let err = || format!("\"{s}\" is not a percentage (examples: 1%, 0.5%)");
    let (value, unit) = split_number(s).ok_or_else(err)?;
    match unit {
        "" | "%" => Ok(value),
        _ => Err(err()),
    }
}

/// A latency in microseconds: `50ms`, `800us`, `1s`, or a bare number of milliseconds.
pub fn parse_latency_us(s: &str) -> Result<u64, String> {
    let err = || format!("\"{s}\" is not a latency (examples: 50ms, 800us, 1s)");
    let (value, unit) = split_number(s).ok_or_else(err)?;
    let scale = match unit {
        "" | "ms" => 1000.0,
        "us" | "µs" => 1.0,
        "s" => 1_000_000.0,
        _ => return Err(err()),
    };
    let us = (value * scale).round();
    if us >= 1.0 {
        Ok(us as u64)
    } else {
        Err(format!("\"{s}\" must be at least 1us"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("60s"), Ok(60.0));
        assert_eq!(parse_duration_s("60"), Ok(60.0));
        assert_eq!(parse_duration_s(" 2m "), Ok(120.0));
        assert_eq!(parse_duration_s("1h"), Ok(3600.0));
        assert_eq!(parse_duration_s("500ms"), Ok(0.5));
        assert_eq!(parse_duration_s("1.5s"), Ok(1.5));
        for bad in ["", "s", "60x", "-1s", "1e3", "six"] {
            assert!(parse_duration_s(bad).is_err(), "{bad}");
        }
        assert!(
            parse_duration_s("6x")
                .expect_err("must be rejected")
                .contains("is not a duration")
        );
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate_per_s("20/s"), Ok(20.0));
        assert_eq!(parse_rate_per_s("20"), Ok(20.0));
        assert_eq!(parse_rate_per_s("600/min"), Ok(10.0));
        assert_eq!(parse_rate_per_s("60/m"), Ok(1.0));
        assert_eq!(parse_rate_per_s("0.5/s"), Ok(0.5));
        for bad in ["20s", "/s", "x/s", "20/d", ""] {
            assert!(parse_rate_per_s(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percents_and_latencies() {
        assert_eq!(parse_percent("1%"), Ok(1.0));
        assert_eq!(parse_percent("0.5"), Ok(0.5));
        assert!(parse_percent("1x").is_err());
        assert_eq!(parse_latency_us("50ms"), Ok(50_000));
        assert_eq!(parse_latency_us("50"), Ok(50_000));
        assert_eq!(parse_latency_us("800us"), Ok(800));
        assert_eq!(parse_latency_us("1s"), Ok(1_000_000));
        assert_eq!(parse_latency_us("0.5ms"), Ok(500));
        assert!(parse_latency_us("0us").is_err());
        assert!(parse_latency_us("5m").is_err());
    }

    #[test]
    fn media_and_protocol_names() {
        for m in MediaModel::ALL {
            assert_eq!(m.as_str().parse::<MediaModel>(), Ok(m));
            // The serde name is the flag name.
            let json = serde_json::to_string(&m).expect("serializes");
            assert_eq!(json, format!("\"{m}\""));
        }
        let err = "audio-only"
            .parse::<MediaModel>()
            .expect_err("must be rejected");
        assert!(err.contains("audio-video-simulcast"), "{err}");
        assert_eq!("janus".parse::<ProtocolKind>(), Ok(ProtocolKind::Janus));
        assert_eq!("whip".parse::<ProtocolKind>(), Ok(ProtocolKind::Whip));
        assert!("sip".parse::<ProtocolKind>().is_err());
    }

    const EXAMPLE: &str = r#"
url = "http://127.0.0.1:8080"
protocol = "whip"
rooms = 10
room-prefix = "bench-"
publishers = 1
subscribers = 50
media = "video-simulcast"
duration = "60s"
ramp = "20/s"
churn = 2
video-kbps = 1500
fps = 30
keyframe-interval = "2s"
dtx = true
threads = 2
connect-timeout = 15
label = "nightly"

[criteria]
max-loss = "1%"
max-p99 = "50ms"
min-connected = 99
"#;

    #[test]
    fn toml_file_parses_every_key() {
        let patch = ScenarioPatch::from_toml(EXAMPLE).expect("parses");
        let (s, notes) = patch.build().expect("valid");
        assert!(notes.is_empty());
        assert_eq!(s.rooms, 10);
        assert_eq!(s.room_prefix, "bench-");
        assert_eq!(s.subscribers, 50);
        assert_eq!(s.media, MediaModel::VideoSimulcast);
        assert_eq!(s.duration_s, 60.0);
        assert_eq!(s.ramp_per_s, 20.0);
        assert_eq!(s.churn_per_s, 2.0);
        assert_eq!(s.video_kbps, 1500);
        assert_eq!(s.keyframe_interval_s, 2.0);
        assert!(s.audio_dtx);
        assert_eq!(s.threads, 2);
        assert_eq!(s.connect_timeout_s, 15.0);
        assert_eq!(s.criteria.max_loss_pct, Some(1.0));
        assert_eq!(s.criteria.max_p99_us, Some(50_000));
        assert_eq!(s.criteria.min_connected_pct, Some(99.0));
        assert_eq!(patch.label.as_deref(), Some("nightly"));
    }

    #[test]
    fn the_example_file_in_the_repository_is_valid() {
        let text = include_str!("../../scenarios/example.toml");
        let patch = ScenarioPatch::from_toml(text).expect("parses");
        let (s, _) = patch.build().expect("valid");
        assert_eq!(s.planned_peers(), 10 * 51);
        assert_eq!(s.media, MediaModel::AudioVideoSimulcast);
        assert_eq!(s.criteria.max_p99_us, Some(50_000));
    }

    #[test]
    fn a_room_file_parses() {
        let text =
            "protocol = \"room\"\nrooms = 10\nparticipants = 6\n[criteria]\nmin-streams = 590\n";
        let (s, _) = ScenarioPatch::from_toml(text)
            .expect("parses")
            .build()
            .expect("valid");
        assert_eq!((s.protocol, s.participants), (ProtocolKind::Room, 6));
        assert_eq!(s.criteria.min_streams, Some(590));
        assert_eq!(s.expected_streams(), 600);
        assert_eq!(s.total_publishers(), 60);
    }

    #[test]
    fn flags_override_the_file() {
        let file = ScenarioPatch::from_toml(EXAMPLE).expect("parses");
        let flags = ScenarioPatch {
            rooms: Some(2),
            max_loss_pct: Some(5.0),
            ..ScenarioPatch::default()
        };
        let (s, _) = file.overridden_by(&flags).build().expect("valid");
        assert_eq!(s.rooms, 2);
        assert_eq!(s.subscribers, 50, "from the file");
        assert_eq!(s.criteria.max_loss_pct, Some(5.0));
        assert_eq!(s.criteria.max_p99_us, Some(50_000), "from the file");
    }

    #[test]
    fn file_errors_name_the_key() {
        let err = ScenarioPatch::from_toml("duration = \"6x\"").expect_err("must be rejected");
        assert!(err.starts_with("duration:"), "{err}");
        let err = ScenarioPatch::from_toml("roms = 3").expect_err("must be rejected");
        assert!(err.contains("roms"), "{err}");
        let err = ScenarioPatch::from_toml("media = \"smell\"").expect_err("must be rejected");
        assert!(err.starts_with("media:"), "{err}");
        let err = ScenarioPatch::from_toml("[criteria]\nmax-loss = \"lots\"")
            .expect_err("must be rejected");
        assert!(err.starts_with("criteria.max-loss:"), "{err}");
        let err = ScenarioPatch::from_toml("url = \"http://x\"\nrooms = \"ten\"")
            .expect_err("must be rejected");
        assert!(err.starts_with("line 2 (rooms = \"ten\"): "), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases: Vec<(ScenarioPatch, &str)> = vec![
            (
                ScenarioPatch {
                    url: Some("127.0.0.1:8080".into()),
                    ..Default::default()
                },
                "url",
            ),
            (
                ScenarioPatch {
                    rooms: Some(0),
                    ..Default::default()
                },
                "rooms",
            ),
            (
                ScenarioPatch {
                    publishers: Some(0),
                    subscribers: Some(0),
                    ..Default::default()
                },
                "publishers",
            ),
            (
                ScenarioPatch {
                    room_prefix: Some("a/b".into()),
                    ..Default::default()
                },
                "room-prefix",
            ),
            (
                ScenarioPatch {
                    subscriber_region: Some("eu west".into()),
                    ..Default::default()
                },
                "subscriber-region",
            ),
            (
                ScenarioPatch {
                    protocol: Some(ProtocolKind::Janus),
                    publisher_region: Some("a".into()),
                    ..Default::default()
                },
                "publisher-region",
            ),
            (
                ScenarioPatch {
                    duration_s: Some(0.0),
                    ..Default::default()
                },
                "duration",
            ),
            (
                ScenarioPatch {
                    ramp_per_s: Some(f64::NAN),
                    ..Default::default()
                },
                "ramp",
            ),
            (
                ScenarioPatch {
                    subscribers: Some(0),
                    churn_per_s: Some(1.0),
                    ..Default::default()
                },
                "churn",
            ),
            (
                ScenarioPatch {
                    video_fps: Some(0),
                    ..Default::default()
                },
                "fps",
            ),
            (
                ScenarioPatch {
                    media: Some(MediaModel::Audio),
                    target_pps: Some(1000.0),
                    ..Default::default()
                },
                "target-pps",
            ),
            (
                ScenarioPatch {
                    max_loss_pct: Some(101.0),
                    ..Default::default()
                },
                "max-loss",
            ),
            (
                ScenarioPatch {
                    rooms: Some(1000),
                    subscribers: Some(1000),
                    ..Default::default()
                },
                "rooms",
            ),
        ];
        for (patch, key) in cases {
            let err = patch.build().expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().starts_with(&format!("{key}: ")), "{err}");
        }
    }

    #[test]
    fn target_pps_sets_the_video_bitrate() {
        let patch = ScenarioPatch {
            rooms: Some(2),
            publishers: Some(1),
            media: Some(MediaModel::Video),
            target_pps: Some(2.0 * 300.0),
            ..Default::default()
        };
        let (s, _) = patch.build().expect("valid");
        // 300 pps per publisher at 30 fps: about ten packets a frame.
        let pps = media::publisher_pps(s.media, s.video_kbps, s.video_fps, 3.0, false);
        assert!(
            (pps - 300.0).abs() / 300.0 < 0.1,
            "{pps} pps at {} kbps",
            s.video_kbps
        );
    }

    #[test]
    fn old_reports_without_new_fields_still_parse() {
        let mut json = serde_json::to_value(Scenario::default()).expect("serializes");
        let map = json.as_object_mut().expect("object");
        map.remove("target_pps");
        map.remove("keyframe_interval_s");
        let s: Scenario = serde_json::from_value(json).expect("parses");
        assert_eq!(s, Scenario::default());
    }
}
