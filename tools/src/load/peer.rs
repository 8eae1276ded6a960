//! One synthetic peer inside a shard, load or test alike: its socket, its `Rtc`, and what it
//! does with media. A publisher writes its sources' packets when they are due; a subscriber
//! hands each datagram and packet to its [`Receiving`]. Every input (datagram, timeout, the
//! owner's command) is followed by a drain of `poll_output`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use quinn_udp::UdpSocketState;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use super::io::SendBatch;
use super::negotiate::{NewPeer, PeerPlan};
use super::protocol::{PeerFailure, SessionHandle};
use super::stats::Interval;
use crate::peer::{PeerState, lock};
use crate::reception::Receiving;
use crate::send::{PublisherStats, Sending};
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

/// What a peer does with media: send its sources, or receive and check.
#[derive(Debug)]
pub enum PeerMedia {
    Publisher {
        sending: Sending,
        /// Where the owner of a test peer reads what was sent; `None` for load peers.
        stats: Option<Arc<Mutex<PublisherStats>>>,
    },
    Subscriber {
        receiving: Receiving,
        /// Joined at the first media packet (the room has publishers), not when DTLS is up.
        expect_media: bool,
    },
}

/// What the owner of a peer can ask of it while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCommand {
    /// Stop sending one video layer (by index) at the next frame boundary.
    PauseLayer(u8),
    /// Send the layer again, from the next frame due.
    ResumeLayer(u8),
    /// Send a PLI for the video stream.
    RequestKeyframe,
}

#[derive(Debug)]
pub struct LivePeer {
    pub plan: PeerPlan,
    pub session: SessionHandle,
    pub socket: UdpSocket,
    pub udp: UdpSocketState,
    local: SocketAddr,
    rtc: Rtc,
    media: PeerMedia,
    /// What the peer's owner sees (only test peers have an owner watching).
    state: Arc<PeerState>,
    started: Instant,
    /// Not joined by then: failed.
    deadline: Instant,
    rtc_due: Instant,
    /// ICE connected at some point (tells an ICE timeout from a DTLS one).
    ice_connected: bool,
    dtls_connected: bool,
    /// A publisher's sources have been polled once (they start on the first poll after
    /// connecting).
    sending_started: bool,
    joined: bool,
    /// Set when the peer joins during a call; the shard takes it.
    pub just_joined: Option<Duration>,
    /// A room subscriber received media from every remote track it expects.
    complete: bool,
    /// Set when that happens during a call; the shard takes it.
    pub just_completed: Option<Duration>,
}

impl LivePeer {
    pub fn new(peer: NewPeer, connect_timeout: Duration) -> Self {
        Self {
            plan: peer.plan,
            session: peer.session,
            socket: UdpSocket::from_std(peer.socket),
            udp: peer.udp,
            local: peer.local,
            rtc: peer.rtc,
            media: peer.media,
            state: peer.state,
            started: peer.started,
            deadline: peer.started + connect_timeout,
            rtc_due: peer.started,
            ice_connected: false,
            dtls_connected: false,
            sending_started: false,
            joined: false,
            just_joined: None,
            complete: false,
            just_completed: None,
        }
    }

    /// A push-to-talk run's floor check of a room subscriber (`None` for other peers).
    pub fn floor_check(&self) -> Option<crate::load::ptt::FloorCheck> {
        match &self.media {
            PeerMedia::Subscriber { receiving, .. } => receiving.floor_check().cloned(),
            PeerMedia::Publisher { .. } => None,
        }
    }

    /// Remote tracks a room subscriber received media from (`None` for other peers).
    pub fn sources(&self) -> Option<usize> {
        match &self.media {
            PeerMedia::Subscriber { receiving, .. } => receiving.counted_sources(),
            PeerMedia::Publisher { .. } => None,
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
        if let PeerMedia::Publisher { sending, .. } = &self.media {
            if self.dtls_connected {
                if !self.sending_started {
                    return now;
                }
                if let Some(due) = sending.next_due() {
                    wake = wake.min(due);
                }
            }
        }
        wake
    }

    /// The peer ended (`failure`: on a failure); its owner, if any, sees it.
    pub fn report_end(&self, failure: Option<&PeerEnd>) {
        self.state.end(failure.map(|f| f.detail.clone()));
    }

    /// Feeds one received datagram and drains.
    pub fn handle_datagram(
        &mut self,
        ctx: &mut Ctx<'_>,
        source: SocketAddr,
        data: &[u8],
    ) -> Result<(), PeerEnd> {
        self.state.count_in();
        if let PeerMedia::Subscriber { receiving, .. } = &mut self.media {
            if !receiving.admit(&mut self.rtc, ctx.now, source, data) {
                return Ok(());
            }
        }
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

    /// Carries out the owner's `command`, and drains.
    pub fn handle_command(
        &mut self,
        ctx: &mut Ctx<'_>,
        command: PeerCommand,
    ) -> Result<(), PeerEnd> {
        match (&mut self.media, command) {
            (PeerMedia::Publisher { sending, .. }, PeerCommand::PauseLayer(layer)) => {
                sending.pause_layer(layer, true);
            }
            (PeerMedia::Publisher { sending, .. }, PeerCommand::ResumeLayer(layer)) => {
                sending.pause_layer(layer, false);
            }
            (PeerMedia::Subscriber { receiving, .. }, PeerCommand::RequestKeyframe) => {
                receiving.request_keyframe(&mut self.rtc);
            }
            _ => {}
        }
        self.share_stats();
        self.drain(ctx)
    }

    /// Final jitter of each received stream, µs.
    pub fn stream_jitter_us(&self) -> Vec<f64> {
        match &self.media {
            PeerMedia::Subscriber { receiving, .. } => receiving.stream_jitter_us(),
            PeerMedia::Publisher { .. } => Vec::new(),
        }
    }

    /// Hands a test publisher's owner what was sent so far.
    fn share_stats(&self) {
        if let PeerMedia::Publisher {
            sending,
            stats: Some(shared),
        } = &self.media
        {
            *lock(shared) = sending.stats();
        }
    }

    fn write_media(&mut self, ctx: &mut Ctx<'_>) {
        let PeerMedia::Publisher { sending, .. } = &mut self.media else {
            return;
        };
        self.sending_started = true;
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
        self.share_stats();
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
                    self.state.count_out();
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
            Event::IceConnectionStateChange(state) => {
                let up = matches!(
                    state,
                    IceConnectionState::Connected | IceConnectionState::Completed
                );
                self.state.set_ice_connected(up);
                self.ice_connected |= up;
                if state == IceConnectionState::Disconnected && self.joined {
                    return Err(PeerEnd::failed(
                        "disconnected",
                        "ICE disconnected (consent checks failed)",
                    ));
                }
            }
            Event::Connected => {
                self.dtls_connected = true;
                self.state.set_connected();
                let joins_now = match &self.media {
                    PeerMedia::Publisher { .. } => true,
                    PeerMedia::Subscriber { expect_media, .. } => !expect_media,
                };
                if joins_now {
                    self.join(ctx.now);
                }
            }
            Event::RtpPacket(p) => {
                if let PeerMedia::Subscriber { receiving, .. } = &mut self.media {
                    let intact = receiving.on_rtp(
                        &mut self.rtc,
                        ctx.now,
                        ctx.wallclock_us,
                        &p,
                        ctx.interval,
                    );
                    let complete = !self.complete && receiving.sources_complete();
                    if intact {
                        self.join(ctx.now);
                    }
                    if complete {
                        self.complete = true;
                        self.just_completed = Some(ctx.now.saturating_duration_since(self.started));
                    }
                }
            }
            Event::KeyframeRequest(req) => {
                if let PeerMedia::Publisher { sending, .. } = &mut self.media {
                    sending.request_keyframe(&req);
                }
                self.share_stats();
            }
            _ => {}
        }
        Ok(())
    }

    fn join(&mut self, now: Instant) {
        if !self.joined {
            self.joined = true;
            self.just_joined = Some(now.saturating_duration_since(self.started));
        }
    }
}

/// The `Rtc` input for datagram `data` from `source` to `local`; `None` when str0m cannot
/// take it (a datagram it does not recognise).
fn receive_input(
    now: Instant,
    source: SocketAddr,
    local: SocketAddr,
    data: &[u8],
) -> Option<Input<'_>> {
    let contents = data.try_into().ok()?;
    Some(Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source,
            destination: local,
            contents,
        },
    ))
}
