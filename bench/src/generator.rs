//! The load generator: one thread, on its own CPU, that sends a publisher's packets at a set
//! rate and counts what reaches the subscribers, light enough that the system under test, not
//! the generator, sets the ceiling.
//!
//! - Against the node, the publisher and every subscriber are str0m clients (WHIP and WHEP,
//!   ICE, DTLS, SRTP with AES-GCM). Once connected, a subscriber's RTP is counted from its
//!   clear-text header and never decrypted; str0m still gets everything else (STUN, DTLS,
//!   RTCP), so the session stays alive.
//! - Against the bare loop, the source is raw RTP sealed with AES-GCM and the subscribers are
//!   plain sockets.
//!
//! A step sends exactly `count` packets at `rate` and then waits until nothing has arrived for
//! a while: what arrived, against `count` × the fan-out, is the loss, with no window edges.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{UdpSockRef, UdpSocketState};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tools::load::io::RecvBuffers;
use tools::{Endpoint, Grants, SignalingClient};

use crate::srtp::{self, GcmContext};

/// The room the benchmark publishes in.
pub const ROOM: &str = "bench";
/// How long nothing must arrive before a step counts as over.
const QUIET: Duration = Duration::from_millis(250);
/// The longest a step waits for stragglers.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// The resolution of the poll's timeout.
const SLEEP_GRANULARITY: Duration = Duration::from_millis(1);
/// How long peers may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket buffers asked for: a step's burst must not overflow the generator's own sockets.
const SOCKET_BUFFER: usize = 8 << 20;

/// What the publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// VP8 video, each frame `--frame-packets` packets sent back to back (the node parses
    /// each payload descriptor, keeps video for resends and starts subscribers at a keyframe).
    Video,
    /// Opus audio.
    Audio,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Audio => "audio",
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Packets the source sent (the count asked for, rounded up to whole frames).
    pub sent: u64,
    /// Packets that reached the subscribers, all together.
    pub received: u64,
    /// How long sending took.
    pub send_secs: f64,
    /// The generator could not keep the rate (more than 5 % late): the result says more
    /// about the generator than about what it measured.
    pub late: bool,
}

/// A str0m client (ICE-controlling, RTP mode). Its socket is kept by whoever reads it (the
/// source or a sink) and lent to [`Client::drive`].
struct Client {
    rtc: Rtc,
    local: SocketAddr,
    mid: Mid,
    next: Instant,
    connected: bool,
}

impl Client {
    /// Negotiate through WHIP (`SendOnly`) or WHEP (`RecvOnly`) from a fresh socket.
    fn connect(
        signaling: &SignalingClient,
        endpoint: Endpoint,
        kind: Kind,
        identity: &str,
    ) -> anyhow::Result<(Self, UdpSocket)> {
        let (direction, grants) = match endpoint {
            Endpoint::Whip => (
                Direction::SendOnly,
                Grants {
                    publish: true,
                    ..Grants::default()
                },
            ),
            _ => (
                Direction::RecvOnly,
                Grants {
                    subscribe: true,
                    ..Grants::default()
                },
            ),
        };
        let socket = bind()?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        let mut change = rtc.sdp_api();
        let media = match kind {
            Kind::Video => MediaKind::Video,
            Kind::Audio => MediaKind::Audio,
        };
        let mid = change.add_media(media, direction, None, None, None);
        let (offer, pending) = change.apply().context("nothing to offer")?;
        let token = tools::token::dev_token(ROOM, identity, grants)?;
        let resource = signaling
            .offer(endpoint, ROOM, &token, &offer.to_sdp_string())
            .with_context(|| format!("{identity}: the node refused the offer"))?;
        let answer =
            SdpAnswer::from_sdp_string(&resource.answer).context("the answer does not parse")?;
        rtc.sdp_api().accept_answer(pending, answer)?;
        let client = Self {
            rtc,
            local,
            mid,
            next: now,
            connected: false,
        };
        Ok((client, socket))
    }

    fn input(&mut self, now: Instant, source: SocketAddr, data: &[u8]) -> anyhow::Result<()> {
        let Ok(contents) = data.try_into() else {
            return Ok(()); // not something str0m reads
        };
        self.rtc.handle_input(Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        ))?;
        Ok(())
    }

    /// Run str0m's timers if due and send what it has to send through `socket` (the one
    /// bound to `local`).
    fn drive(&mut self, now: Instant, socket: &UdpSocket) -> anyhow::Result<()> {
        if now >= self.next {
            self.rtc.handle_input(Input::Timeout(now))?;
        }
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.next = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    // A full buffer is loss, as on a network.
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => bail!("a peer lost its connection to the node"),
                Output::Event(_) => {}
            }
        }
    }
}

/// What sends the stream.
enum Source {
    /// A WHIP publisher.
    Publisher {
        client: Box<Client>,
        socket: UdpSocket,
        state: UdpSocketState,
        pt: Pt,
        kind: Kind,
        seq: u64,
        timestamp: u32,
        /// Packets of the current frame already sent.
        position: usize,
        keyframe: Arc<[u8]>,
        delta: Arc<[u8]>,
        /// A frame's second and later packets (no VP8 start bit).
        continuation: Arc<[u8]>,
    },
    /// Sealed RTP to the bare loop.
    Raw {
        socket: UdpSocket,
        destination: Option<SocketAddr>,
        context: GcmContext,
        seq: u16,
        payload: Vec<u8>,
        buf: Vec<u8>,
    },
}

/// One receiving end.
struct Sink {
    socket: UdpSocket,
    state: UdpSocketState,
    /// The WHEP subscriber on this socket (none for the bare loop's sinks).
    client: Option<Client>,
    /// RTP packets counted.
    rtp: u64,
}

pub struct Generator {
    poll: Poll,
    events: Events,
    source: Source,
    sinks: Vec<Sink>,
    recv: RecvBuffers,
    /// Packets per video frame; steps send whole frames.
    frame_packets: usize,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("sinks", &self.sinks.len())
            .finish_non_exhaustive()
    }
}

const SOURCE: Token = Token(usize::MAX);

impl Generator {
    /// A connected WHIP publisher of `kind` packets with `size`-byte payloads, video in frames
    /// of `frame_packets` packets, no subscribers yet.
    pub fn publisher(
        signaling: &SignalingClient,
        kind: Kind,
        size: usize,
        frame_packets: usize,
    ) -> anyhow::Result<Self> {
        if frame_packets == 0 || (kind == Kind::Audio && frame_packets > 1) {
            bail!("an audio frame is one packet and a video frame at least one");
        }
        let (client, mut socket) = Client::connect(signaling, Endpoint::Whip, kind, "publisher")?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let codec = match kind {
            Kind::Video => Codec::Vp8,
            Kind::Audio => Codec::Opus,
        };
        let pt = tools::load::negotiate::accepted_pt(&client.rtc, client.mid, codec)
            .map_err(|e| anyhow::anyhow!("publisher: {e}"))?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut socket, SOURCE, Interest::READABLE)?;
        let mut generator = Self {
            poll,
            events: Events::with_capacity(256),
            source: Source::Publisher {
                client: Box::new(client),
                socket,
                state,
                pt,
                kind,
                seq: 1,
                timestamp: 0,
                position: 0,
                keyframe: payload(kind, size, Frame::Key).into(),
                delta: payload(kind, size, Frame::Delta).into(),
                continuation: payload(kind, size, Frame::Continuation).into(),
            },
            sinks: Vec::new(),
            recv: RecvBuffers::new(),
            frame_packets,
        };
        generator.until(
            CONNECT_TIMEOUT,
            "the publisher connects",
            |g| matches!(&g.source, Source::Publisher { client, .. } if client.connected),
        )?;
        Ok(generator)
    }

    /// Add `count` WHEP subscribers and wait until all are connected.
    pub fn subscribe(
        &mut self,
        signaling: &SignalingClient,
        kind: Kind,
        count: usize,
    ) -> anyhow::Result<()> {
        for i in 0..count {
            let (client, socket) =
                Client::connect(signaling, Endpoint::Whep, kind, &format!("subscriber-{i}"))?;
            let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
            self.add_sink(socket, state, Some(client))?;
            // Keep the earlier ones going while signaling the next.
            self.pump(Duration::ZERO)?;
        }
        self.until(CONNECT_TIMEOUT, "every subscriber connects", |g| {
            g.sinks
                .iter()
                .all(|s| s.client.as_ref().is_some_and(|c| c.connected))
        })
    }

    /// `fanout` plain sockets and a raw source (whose destination is set later): for the bare
    /// loop.
    pub fn raw(fanout: usize, size: usize) -> anyhow::Result<Self> {
        let mut generator = Self {
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            source: Source::Raw {
                socket: bind()?,
                destination: None,
                context: GcmContext::new(0),
                seq: 1,
                payload: vec![0x5a; size],
                buf: Vec::with_capacity(size + 64),
            },
            sinks: Vec::new(),
            recv: RecvBuffers::new(),
            frame_packets: 1,
        };
        for _ in 0..fanout {
            let socket = bind()?;
            let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
            generator.add_sink(socket, state, None)?;
        }
        Ok(generator)
    }

    pub fn sink_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        Ok(self
            .sinks
            .iter()
            .map(|s| s.socket.local_addr())
            .collect::<Result<_, _>>()?)
    }

    pub fn set_destination(&mut self, to: SocketAddr) {
        if let Source::Raw { destination, .. } = &mut self.source {
            *destination = Some(to);
        }
    }

    fn add_sink(
        &mut self,
        mut socket: UdpSocket,
        state: UdpSocketState,
        client: Option<Client>,
    ) -> anyhow::Result<()> {
        let token = Token(self.sinks.len());
        self.poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)?;
        self.sinks.push(Sink {
            socket,
            state,
            client,
            rtp: 0,
        });
        Ok(())
    }

    /// Packets counted at the sinks so far.
    pub fn received(&self) -> u64 {
        self.sinks.iter().map(|s| s.rtp).sum()
    }

    /// Send keyframes at 50 frames/s until every sink has received something.
    pub fn warm_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while self.sinks.iter().any(|s| s.rtp == 0) {
            if Instant::now() > deadline {
                let silent = self.sinks.iter().filter(|s| s.rtp == 0).count();
                bail!("{silent} subscribers received nothing within {CONNECT_TIMEOUT:?}");
            }
            let now = Instant::now();
            for _ in 0..self.frame_packets {
                self.send(now, true)?;
            }
            self.flush(now)?;
            self.pump(Duration::from_millis(20))?;
        }
        self.drain()?;
        Ok(())
    }

    /// Send `count` packets (rounded up to whole frames) at `rate` per second, a frame's
    /// packets together, then count what arrives until it stops.
    pub fn step(&mut self, rate: f64, count: u64) -> anyhow::Result<Step> {
        let frame = self.frame_packets as u64;
        let count = count.div_ceil(frame) * frame;
        let before = self.received();
        let start = Instant::now();
        let mut sent = 0;
        while sent < count {
            let now = Instant::now();
            let due = (((now - start).as_secs_f64() * rate) as u64 + 1).min(count);
            let due = due.div_ceil(frame) * frame;
            while sent < due {
                self.send(now, false)?;
                sent += 1;
            }
            self.flush(now)?;
            let next = start + Duration::from_secs_f64(sent as f64 / rate);
            let wait = next.saturating_duration_since(Instant::now());
            // The poll sleeps whole milliseconds, rounded up: sleeping for a shorter wait
            // would send a millisecond's packets as one burst, and the node's delay would
            // measure the burst. Closer than that to the next send, receive without sleeping.
            self.pump(wait.saturating_sub(SLEEP_GRANULARITY))?;
        }
        let send_secs = start.elapsed().as_secs_f64();
        self.drain()?;
        let planned = count as f64 / rate;
        Ok(Step {
            sent: count,
            received: self.received() - before,
            send_secs,
            late: send_secs > planned * 1.05 + 0.02,
        })
    }

    /// Receive until nothing has arrived for [`QUIET`].
    fn drain(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = self.received();
        let mut since = Instant::now();
        while since.elapsed() < QUIET && start.elapsed() < DRAIN_LIMIT {
            self.pump(Duration::from_millis(10))?;
            if self.received() != last {
                last = self.received();
                since = Instant::now();
            }
        }
        Ok(())
    }

    /// Send the next packet; `keyframe` tells what a frame's first packet starts.
    fn send(&mut self, now: Instant, keyframe: bool) -> anyhow::Result<()> {
        let frame_packets = self.frame_packets;
        match &mut self.source {
            Source::Publisher {
                client,
                pt,
                kind,
                seq,
                timestamp,
                position,
                keyframe: key,
                delta,
                continuation,
                ..
            } => {
                let first = *position == 0;
                let payload = match (first, keyframe) {
                    (true, true) => key.clone(),
                    (true, false) => delta.clone(),
                    (false, _) => continuation.clone(),
                };
                if first {
                    let video = *kind == Kind::Video;
                    *timestamp = timestamp.wrapping_add(if video { 3000 } else { 960 });
                }
                *position += 1;
                let last = *position == frame_packets;
                if last {
                    *position = 0;
                }
                let mut api = client.rtc.direct_api();
                let tx = api
                    .stream_tx_by_mid(client.mid, None)
                    .context("the publisher has no send stream")?;
                // Not kept for resends: a repair the node asks for after an overloaded step
                // would reach the subscribers during the next one and count there.
                tx.write_rtp(
                    RtpWrite::new(*pt, (*seq).into(), *timestamp, now, payload)
                        .marker(last)
                        .nackable(false),
                );
                *seq += 1;
            }
            Source::Raw {
                socket,
                destination,
                context,
                seq,
                payload,
                buf,
            } => {
                let to = destination.context("the bare loop's address is not set")?;
                buf.clear();
                srtp::rtp_header(buf, 96, *seq, u32::from(*seq) * 3000, 0x0b0b_0b0b);
                buf.extend_from_slice(payload);
                context.seal(buf);
                let _ = socket.send_to(buf, to);
                *seq = seq.wrapping_add(1);
            }
        }
        Ok(())
    }

    /// Hand what the publisher's str0m has written to the socket.
    fn flush(&mut self, now: Instant) -> anyhow::Result<()> {
        if let Source::Publisher { client, socket, .. } = &mut self.source {
            client.drive(now, socket)?;
        }
        Ok(())
    }

    /// Wait up to `timeout` for datagrams, take in all that are waiting, and run the clients'
    /// timers that are due.
    fn pump(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.poll.poll(&mut self.events, Some(timeout))?;
        let now = Instant::now();
        let ready: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
        for token in ready {
            if token == SOURCE {
                if let Source::Publisher {
                    client,
                    socket,
                    state,
                    ..
                } = &mut self.source
                {
                    read_all(&mut self.recv, socket, state, |from, data| {
                        client.input(now, from, data)
                    })?;
                }
                continue;
            }
            let Some(sink) = self.sinks.get_mut(token.0) else {
                continue;
            };
            let Sink {
                socket,
                state,
                client,
                rtp,
            } = sink;
            read_all(&mut self.recv, socket, state, |from, data| {
                if is_rtp(data) {
                    *rtp += 1;
                    Ok(())
                } else if let Some(client) = client.as_mut() {
                    // Answer at once (below), whatever str0m's timer says.
                    client.next = now;
                    client.input(now, from, data)
                } else {
                    Ok(())
                }
            })?;
        }
        if let Source::Publisher { client, socket, .. } = &mut self.source {
            client.drive(now, socket)?;
        }
        for sink in &mut self.sinks {
            if let Some(client) = sink.client.as_mut() {
                if now >= client.next {
                    client.drive(now, &sink.socket)?;
                }
            }
        }
        Ok(())
    }

    /// Pump until `done` holds.
    fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                bail!("{what}: not within {timeout:?}");
            }
            self.pump(Duration::from_millis(5))?;
        }
        Ok(())
    }
}

/// Read every datagram waiting on `socket`.
fn read_all(
    recv: &mut RecvBuffers,
    socket: &UdpSocket,
    state: &UdpSocketState,
    mut each: impl FnMut(SocketAddr, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    loop {
        match recv.recv(socket, state) {
            Ok(_) => {
                for (from, data) in recv.datagrams() {
                    each(from, data)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// RTP, not RTCP, STUN or DTLS (RFC 7983; RTCP packet types are 192-223).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] & 0xc0 == 0x80 && !(192..=223).contains(&d[1])
}

/// Which packet of a video frame a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// The first packet of a keyframe.
    Key,
    /// The first packet of a delta frame.
    Delta,
    /// A later packet of either.
    Continuation,
}

/// A payload of `size` bytes: for video a VP8 payload descriptor with a picture ID (the start
/// bit set on a frame's first packet) and, on a first packet, a payload header that marks a
/// key or delta frame.
fn payload(kind: Kind, size: usize, frame: Frame) -> Vec<u8> {
    let mut p = vec![0x33; size.max(10)];
    if kind == Kind::Video {
        let start = if frame == Frame::Continuation {
            0
        } else {
            0x10
        };
        p[..4].copy_from_slice(&[0x80 | start, 0x80, 0x80, 0x01]);
        match frame {
            // The VP8 frame tag's first bit is 0 for a keyframe, which then has a start code.
            Frame::Key => {
                p[4] = 0x10;
                p[7..10].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            }
            Frame::Delta => p[4] = 0x11,
            Frame::Continuation => {}
        }
    }
    p
}

/// A non-blocking loopback socket with large buffers (the kernel caps them at
/// `net.core.[rw]mem_max`).
pub fn bind() -> anyhow::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_nonblocking(true)?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    Ok(UdpSocket::from_std(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        let mut rtp = vec![0x80, 96];
        rtp.resize(20, 0);
        assert!(is_rtp(&rtp));
        let mut rtcp = vec![0x80, 200];
        rtcp.resize(20, 0);
        assert!(!is_rtp(&rtcp), "a sender report");
        let mut stun = vec![0x00, 0x01];
        stun.resize(20, 0);
        assert!(!is_rtp(&stun));
        let mut dtls = vec![22, 0xfe];
        dtls.resize(20, 0);
        assert!(!is_rtp(&dtls));
        assert!(!is_rtp(&[0x80, 96]), "too short");
    }

    #[test]
    fn video_payloads_start_key_and_delta_frames() {
        let key = payload(Kind::Video, 1200, Frame::Key);
        let delta = payload(Kind::Video, 1200, Frame::Delta);
        let rest = payload(Kind::Video, 1200, Frame::Continuation);
        assert_eq!(key.len(), 1200);
        // S bit and partition 0, picture ID present; the frame tag's P bit tells them apart.
        assert_eq!(key[0], 0x90);
        assert_eq!(key[4] & 1, 0);
        assert_eq!(delta[0], 0x90);
        assert_eq!(delta[4] & 1, 1);
        // Later packets: no start bit, same picture ID.
        assert_eq!(rest[0], 0x80);
        assert_eq!(rest[2..4], key[2..4]);
    }
}
