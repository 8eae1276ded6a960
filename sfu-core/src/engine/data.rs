//! A session's data channels (RFC 8831). The client opens them; the node opens none. Of the
//! channels a client opens, the first reliable one and the first unreliable one carry
//! messages: text passes through the node to control as it came (control routes it, see
//! docs/signaling.md "Data messages"), and control's messages for the client go out on the
//! channel of the class it asks for. The node checks only what protects itself and the link
//! to control: text only, a size cap and a rate cap per session.

use std::time::Instant;

use str0m::channel::{ChannelData, ChannelId};

use crate::limit::Bucket;

/// The largest message the node passes on (control may allow less: `rtc.data_max_bytes`).
/// Browsers send at most 64 KiB to a peer that announces no `max-message-size`.
pub const MAX_DATA_MESSAGE: usize = 64 * 1024;

/// Messages one session may send per second, sustained and at once; more are dropped.
pub const DATA_MESSAGES_PER_SEC: u32 = 50;
pub const DATA_BURST: u32 = 100;

/// Why a message was not passed on or not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRefused {
    /// Binary messages are not relayed (the room's messages are text).
    Binary,
    /// Larger than [`MAX_DATA_MESSAGE`].
    TooLarge,
    /// Not UTF-8, though sent as text.
    NotText,
    /// Over [`DATA_MESSAGES_PER_SEC`].
    RateLimited,
    /// On a channel the session does not use (a third channel, or one already closed).
    UnknownChannel,
    /// The client opened no channel to send on.
    NoChannel,
    /// The channel's send buffer is full (the client does not read).
    BufferFull,
}

impl DataRefused {
    pub fn as_str(self) -> &'static str {
        match self {
            DataRefused::Binary => "binary messages are not relayed",
            DataRefused::TooLarge => "message larger than 64 KiB",
            DataRefused::NotText => "text message is not UTF-8",
            DataRefused::RateLimited => "too many messages",
            DataRefused::UnknownChannel => "message on an unused channel",
            DataRefused::NoChannel => "the client opened no data channel",
            DataRefused::BufferFull => "the data channel's send buffer is full",
        }
    }
}

/// The channels a session uses and its message budget.
#[derive(Debug)]
pub struct DataChannels {
    reliable: Option<ChannelId>,
    lossy: Option<ChannelId>,
    budget: Bucket,
}

impl DataChannels {
    pub fn new(now: Instant) -> Self {
        Self {
            reliable: None,
            lossy: None,
            budget: Bucket::new(DATA_MESSAGES_PER_SEC, DATA_BURST, now),
        }
    }

    /// The client opened channel `id`. Returns whether the session uses it (the first of its
    /// class).
    pub fn opened(&mut self, id: ChannelId, reliable: bool) -> bool {
        let slot = if reliable {
            &mut self.reliable
        } else {
            &mut self.lossy
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(id);
        true
    }

    pub fn closed(&mut self, id: ChannelId) {
        for slot in [&mut self.reliable, &mut self.lossy] {
            if *slot == Some(id) {
                *slot = None;
            }
        }
    }

    /// A message arrived: whether it came reliably and its text, or why it is dropped.
    pub fn receive(
        &mut self,
        message: ChannelData,
        now: Instant,
    ) -> Result<(bool, String), DataRefused> {
        let reliable = if Some(message.id) == self.reliable {
            true
        } else if Some(message.id) == self.lossy {
            false
        } else {
            return Err(DataRefused::UnknownChannel);
        };
        if message.binary {
            return Err(DataRefused::Binary);
        }
        if message.data.len() > MAX_DATA_MESSAGE {
            return Err(DataRefused::TooLarge);
        }
        if !self.budget.take(now) {
            return Err(DataRefused::RateLimited);
        }
        let text = String::from_utf8(message.data).map_err(|_| DataRefused::NotText)?;
        Ok((reliable, text))
    }

    /// The channel to send a message of this class on: an unreliable message may go
    /// reliably when the client opened only a reliable channel, never the other way round.
    pub fn channel_for(&self, reliable: bool) -> Result<ChannelId, DataRefused> {
        let channel = if reliable {
            self.reliable
        } else {
            self.lossy.or(self.reliable)
        };
        channel.ok_or(DataRefused::NoChannel)
    }
}

/// Tests start from a real instant; only differences matter.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ids() -> (ChannelId, ChannelId, ChannelId) {
        // ChannelIds come from str0m; make three distinct ones through its public API.
        let mut rtc = str0m::Rtc::new(Instant::now());
        let mut api = rtc.sdp_api();
        let a = api.add_channel("a".into());
        let b = api.add_channel("b".into());
        let c = api.add_channel("c".into());
        (a, b, c)
    }

    fn text(id: ChannelId, s: &str) -> ChannelData {
        ChannelData {
            id,
            binary: false,
            data: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_first_channel_of_each_class_is_used_and_others_are_refused() {
        let now = Instant::now();
        let (a, b, c) = ids();
        let mut channels = DataChannels::new(now);
        assert_eq!(channels.channel_for(true), Err(DataRefused::NoChannel));
        assert!(channels.opened(a, true));
        assert!(!channels.opened(c, true));
        assert_eq!(
            channels.channel_for(false),
            Ok(a),
            "lossy falls back to reliable"
        );
        assert!(channels.opened(b, false));
        assert_eq!(channels.channel_for(false), Ok(b));
        assert_eq!(
            channels.receive(text(a, "hi"), now),
            Ok((true, "hi".into()))
        );
        assert_eq!(
            channels.receive(text(b, "yo"), now),
            Ok((false, "yo".into()))
        );
        assert_eq!(
            channels.receive(text(c, "no"), now),
            Err(DataRefused::UnknownChannel)
        );
        channels.closed(a);
        assert_eq!(channels.channel_for(true), Err(DataRefused::NoChannel));
        assert_eq!(
            channels.receive(text(a, "late"), now),
            Err(DataRefused::UnknownChannel)
        );
    }

    #[test]
    fn binary_oversized_non_utf8_and_floods_are_refused() {
        let now = Instant::now();
        let (a, _, _) = ids();
        let mut channels = DataChannels::new(now);
        channels.opened(a, true);
        let binary = ChannelData {
            id: a,
            binary: true,
            data: vec![1, 2, 3],
        };
        assert_eq!(channels.receive(binary, now), Err(DataRefused::Binary));
        let big = "x".repeat(MAX_DATA_MESSAGE + 1);
        assert_eq!(
            channels.receive(text(a, &big), now),
            Err(DataRefused::TooLarge)
        );
        let bad = ChannelData {
            id: a,
            binary: false,
            data: vec![0xff, 0xfe],
        };
        assert_eq!(channels.receive(bad, now), Err(DataRefused::NotText));
        // The burst (less the one message the bad UTF-8 took), then nothing until time passes.
        let passed = (0..DATA_BURST * 2)
            .filter(|_| channels.receive(text(a, "m"), now).is_ok())
            .count();
        assert_eq!(passed as u32, DATA_BURST - 1);
        let later = now + Duration::from_secs(1);
        assert!(channels.receive(text(a, "m"), later).is_ok());
    }
}
