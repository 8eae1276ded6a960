//! One synthetic peer inside a shard: its socket, its `Rtc`, and what it does with media. A
//! publisher writes its sources' packets when they are due; a subscriber reads each packet's
//! pattern header and accounts it. Every input is followed by a drain of `poll_output`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use quinn_udp::UdpSocketState;
use str0m::rtp::RtpPacket;
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use super::io::SendBatch;
use super::negotiate::{NewMedia, NewPeer, PeerPlan};
use super::protocol::{PeerFailure, SessionHandle};
use super::stats::{self, Interval, RxStream};
use crate::peer::receive_input;
use crate::send::Sending;
use crate::source::OutgoingPacket;

/// Why a peer ended: the report's failure key and a human-readable detail. `reason` is
/// `None` for a peer that ended without failing (churn, end of the run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEnd {
    pub reason: Option<String>,
    pub detail: String,
}

impl PeerEnd {
    pub fn failed(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            detail: detail.into(),
        }
    }
}

/// What the shard lends a peer for one call.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub now: Instant,
    /// Wall-clock µs since the Unix epoch at `now` (send times, arrival times).
    pub wallclock_us: u64,
    pub batch: &'a mut SendBatch,
    pub interval: &'a mut Interval,
    /// Scratch for one video frame's packets.
    pub frame: &'a mut Vec<OutgoingPacket>,
    pub counters: &'a mut PeerCounters,
}

/// Shard-wide counts of what peers could not do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Datagrams str0m rejected (not for this peer, malformed, failed SRTP).
    pub rejected: u64,
    /// Media packets with no send stream for their mid/rid (the answer refused a layer).
    pub unsendable: u64,
}

#[derive(Debug)]
enum Role {
    Publisher {
        sending: Sending,
        /// Sources have been polled once (they start on the first poll after connecting).
        started: bool,
    },
    Subscriber {
        streams: Vec<RxStream>,
        expect_media: bool,
    },
}

#[derive(Debug)]
pub struct LivePeer {
    pub plan: PeerPlan,
    pub session: SessionHandle,
    pub socket: UdpSocket,
    pub udp: UdpSocketState,
    local: SocketAddr,
    rtc: Rtc,
    role: Role,
    started: Instant,
    /// Not joined by then: failed.
    deadline: Instant,
    rtc_due: Instant,
    ice_connected: bool,
    dtls_connected: bool,
    joined: bool,
    /// Set when the peer joins during a call; the shard takes it.
    pub just_joined: Option<Duration>,
}

impl LivePeer {
    pub fn new(peer: NewPeer, connect_timeout: Duration) -> Self {
        let role = match peer.media {
            NewMedia::Publisher(sending) => Role::Publisher {
                sending,
                started: false,
            },
            NewMedia::Subscriber { expect_media } => Role::Subscriber {
                streams: Vec::new(),
                expect_media,
            },
        };
        Self {
            plan: peer.plan,
            session: peer.session,
            socket: UdpSocket::from_std(peer.socket),
            udp: peer.udp,
            local: peer.local,
            rtc: peer.rtc,
            role,
            started: peer.started,
            deadline: peer.started + connect_timeout,
            rtc_due: peer.started,
            ice_connected: false,
            dtls_connected: false,
            joined: false,
            just_joined: None,
        }
    }

    pub fn joined(&self) -> bool {
        self.joined
    }

    /// When the peer next needs [`handle_timeout`](Self::handle_timeout).
    pub fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self.rtc_due;
        if !self.joined {
            wake = wake.min(self.deadline);
        }
        if let Role::Publisher { sending, started } = &self.role {
            if self.dtls_connected {
                if !started {
                    return now;
                }
                if let Some(due) = sending.next_due() {
                    wake = wake.min(due);
                }
            }
        }
        wake
    }

    /// Feeds one received datagram and drains.
    pub fn handle_datagram(
        &mut self,
        ctx: &mut Ctx<'_>,
        source: SocketAddr,
        data: &[u8],
    ) -> Result<(), PeerEnd> {
        let Some(input) = receive_input(ctx.now, source, self.local, data) else {
            ctx.counters.rejected += 1;
            return Ok(());
        };
        if self.rtc.handle_input(input).is_err() {
            ctx.counters.rejected += 1;
        }
        self.drain(ctx)
    }

    /// Writes due media, advances the `Rtc` to `now`, drains, and checks the join deadline.
    pub fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) -> Result<(), PeerEnd> {
        if self.dtls_connected {
            self.write_media(ctx);
        }
        self.rtc
            .handle_input(Input::Timeout(ctx.now))
            .map_err(|e| PeerEnd::failed("rtc", e.to_string()))?;
        self.drain(ctx)?;
        if !self.joined && ctx.now >= self.deadline {
            let waited = ctx.now.duration_since(self.started);
            let failure = if !self.ice_connected {
                PeerFailure::IceTimeout(waited)
            } else if !self.dtls_connected {
                PeerFailure::DtlsTimeout(waited)
            } else {
                return Err(PeerEnd::failed(
                    "no_media",
                    format!("connected but no media arrived within {waited:?}"),
                ));
            };
            return Err(PeerEnd::failed(failure.reason(), failure.to_string()));
        }
        Ok(())
    }

    /// Final jitter of each received stream, µs.
    pub fn stream_jitter_us(&self) -> Vec<f64> {
        match &self.role {
            Role::Subscriber { streams, .. } => streams.iter().map(RxStream::jitter_us).collect(),
            Role::Publisher { .. } => Vec::new(),
        }
    }

    fn write_media(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Publisher { sending, started } = &mut self.role else {
            return;
        };
        *started = true;
        let (interval, counters) = (&mut *ctx.interval, &mut *ctx.counters);
        sending.write_due(
            &mut self.rtc,
            ctx.now,
            ctx.wallclock_us,
            ctx.frame,
            |p, written| {
                if written {
                    interval.sent += 1;
                    interval.bytes_sent += p.payload.len() as u64;
                } else {
                    counters.unsendable += 1;
                }
            },
        );
    }

    /// Polls the `Rtc` until it asks for a timeout; sends transmits (GSO trains where the
    /// sizes allow) and handles events.
    fn drain(&mut self, ctx: &mut Ctx<'_>) -> Result<(), PeerEnd> {
        let result = loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_due = t;
                    break Ok(());
                }
                Ok(Output::Transmit(t)) => {
                    ctx.batch
                        .push(&self.socket, &self.udp, t.destination, &t.contents);
                }
                Ok(Output::Event(e)) => {
                    if let Err(end) = self.on_event(ctx, e) {
                        break Err(end);
                    }
                }
                Err(e) => break Err(PeerEnd::failed("rtc", e.to_string())),
            }
        };
        ctx.batch.flush(&self.socket, &self.udp);
        result?;
        if !self.rtc.is_alive() {
            return Err(PeerEnd::failed("disconnected", "the connection closed"));
        }
        Ok(())
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, event: Event) -> Result<(), PeerEnd> {
        match event {
            Event::IceConnectionStateChange(state) => match state {
                IceConnectionState::Connected | IceConnectionState::Completed => {
                    self.ice_connected = true;
                }
                IceConnectionState::Disconnected if self.joined => {
                    return Err(PeerEnd::failed(
                        "disconnected",
                        "ICE disconnected (consent checks failed)",
                    ));
                }
                _ => {}
            },
            Event::Connected => {
                self.dtls_connected = true;
                let joins_now = match &self.role {
                    Role::Publisher { .. } => true,
                    Role::Subscriber { expect_media, .. } => !expect_media,
                };
                if joins_now {
                    self.join(ctx.now);
                }
            }
            Event::RtpPacket(p) => self.on_rtp(ctx, &p),
            Event::KeyframeRequest(req) => {
                if let Role::Publisher { sending, .. } = &mut self.role {
                    sending.request_keyframe(&req);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_rtp(&mut self, ctx: &mut Ctx<'_>, p: &RtpPacket) {
        let Role::Subscriber { streams, .. } = &mut self.role else {
            return;
        };
        let interval = &mut *ctx.interval;
        interval.counts.bytes += p.payload.len() as u64;
        let Some(info) = crate::pattern::decode_header(&p.payload) else {
            interval.counts.corrupt += 1;
            return;
        };
        let ssrc = *p.header.ssrc;
        let stream = match streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => &mut streams[i],
            None => {
                streams.push(RxStream::new(ssrc));
                streams.last_mut().expect("just pushed")
            }
        };
        let counts = stream.record(&info, ctx.wallclock_us);
        let new = counts.received > 0;
        interval.counts.add(&counts);
        if new {
            stats::record_latency(
                &mut interval.latency,
                ctx.wallclock_us.saturating_sub(info.sent_us),
            );
        }
        if !self.joined {
            self.join(ctx.now);
        }
    }

    fn join(&mut self, now: Instant) {
        if !self.joined {
            self.joined = true;
            self.just_joined = Some(now.saturating_duration_since(self.started));
        }
    }
}
