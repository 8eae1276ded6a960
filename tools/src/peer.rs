//! The I/O shell shared by publisher and subscriber: one thread owning a UDP socket and a str0m
//! `Rtc`. It feeds the `Rtc` datagrams and timeouts, drains its output after every input or
//! write, and hands events to a [`Role`] (what the peer does with media).

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::crypto::CryptoProvider;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};

use crate::pattern::VideoCodec;
use crate::reception::RawCapture;
use crate::whip::Endpoint;

/// Longest the loop blocks on the socket, so commands and stop requests are seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(10);

/// Largest datagram we expect (anything larger is truncated by the kernel and rejected by str0m).
const RECV_BUFFER: usize = 2048;

/// What a peer does on top of the socket loop. Called only from the peer's thread.
pub(crate) trait Role: Send + 'static {
    type Command: Send + 'static;

    /// Writes whatever media is due at `now`. Called once per loop pass, before the `Rtc` is
    /// advanced to `now` and drained.
    fn drive(&mut self, now: Instant, wallclock_us: u64, rtc: &mut Rtc);

    /// When `drive` next has something to do.
    fn next_due(&self) -> Option<Instant>;

    fn on_event(&mut self, now: Instant, rtc: &mut Rtc, event: Event);

    fn on_command(&mut self, now: Instant, rtc: &mut Rtc, command: Self::Command);

    /// Whether a datagram that arrived on the socket is handed to the `Rtc`. Returning false
    /// loses it as the network would, before SRTP or any feedback logic sees it (used to
    /// provoke NACKs). Every datagram is accepted by default.
    fn accept_datagram(&mut self, _now: Instant, _rtc: &mut Rtc, _datagram: &[u8]) -> bool {
        true
    }
}

/// Connection facts the peer thread publishes to its owner.
#[derive(Debug, Default)]
pub struct PeerState {
    stop: AtomicBool,
    running: AtomicBool,
    ice_connected: AtomicBool,
    connected: AtomicBool,
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    error: Mutex<Option<String>>,
}

impl PeerState {
    /// ICE has a working pair (checking succeeded and the peer has not since disconnected).
    pub fn ice_connected(&self) -> bool {
        self.ice_connected.load(Ordering::Relaxed)
    }

    /// ICE, DTLS and SRTP are up: media can flow.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The peer thread is still running its loop.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    pub fn datagrams_in(&self) -> u64 {
        self.datagrams_in.load(Ordering::Relaxed)
    }

    pub fn datagrams_out(&self) -> u64 {
        self.datagrams_out.load(Ordering::Relaxed)
    }

    /// Why the loop ended, if it ended on an error.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Waits until media can flow; false on timeout or if the peer loop ended.
    pub(crate) fn wait_connected(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.connected() || !self.running()) && self.connected()
    }

    fn set_error(&self, e: String) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
    }
}

/// Locks shared peer data. The data are plain counters and logs, usable even if a holder
/// panicked, so poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The text a panic was raised with (empty when it carried something other than a string).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The crypto provider all peers of this process share.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

/// An `Rtc` as the synthetic clients use it: the offering, ICE-controlling side, in RTP mode,
/// Opus, VP8 and H264, with one host candidate for the peer's socket.
pub(crate) fn client_rtc(local: SocketAddr) -> Result<Rtc, RtcError> {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .set_crypto_provider(crypto_provider())
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    Ok(rtc)
}

/// Payload type (and its RTX) a sending peer offers for H264: str0m's default for this profile.
const H264_PT: u8 = 108;
const H264_RTX_PT: u8 = 109;

/// Constrained Baseline level 3.1, as browsers offer first.
const H264_PROFILE_LEVEL_ID: u32 = 0x42e01f;

/// An `Rtc` like [`client_rtc`]'s for a peer that sends: it offers Opus and only `codec` for
/// video (H264 with packetization-mode 1 alone), so the server cannot pick another video
/// codec than the one the payloads are framed for.
pub(crate) fn sending_rtc(local: SocketAddr, codec: VideoCodec) -> Result<Rtc, RtcError> {
    let mut config = Rtc::builder()
        .set_rtp_mode(true)
        .set_crypto_provider(crypto_provider())
        .clear_codecs()
        .enable_opus(true, false);
    match codec {
        VideoCodec::Vp8 => config = config.enable_vp8(true),
        VideoCodec::H264 => config.codec_config().add_h264(
            H264_PT.into(),
            Some(H264_RTX_PT.into()),
            true,
            H264_PROFILE_LEVEL_ID,
        ),
    }
    let mut rtc = config.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    Ok(rtc)
}

/// The payload type the remote side accepted for `codec` on `mid`, or why there is none.
pub(crate) fn accepted_pt(rtc: &Rtc, mid: Mid, codec: Codec) -> Result<Pt, String> {
    let media = rtc
        .media(mid)
        .ok_or_else(|| format!("the answer dropped media {mid}"))?;
    media
        .remote_pts()
        .iter()
        .copied()
        .find(|pt| {
            rtc.codec_config()
                .find(|p| p.pt() == *pt)
                .is_some_and(|p| p.spec().codec == codec)
        })
        .ok_or_else(|| format!("the answer accepted no {codec:?} payload type on {mid}"))
}

/// Handle to a running peer thread. Dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct PeerThread<C> {
    state: Arc<PeerState>,
    commands: Sender<C>,
    join: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl<C: Send + 'static> PeerThread<C> {
    pub(crate) fn spawn<R: Role<Command = C>>(
        name: &str,
        rtc: Rtc,
        socket: UdpSocket,
        role: R,
    ) -> std::io::Result<Self> {
        Self::spawn_capturing(name, rtc, socket, role, None)
    }

    /// [`PeerThread::spawn`], also copying received datagrams into `capture` (before the `Rtc`
    /// sees them) until it is full.
    pub(crate) fn spawn_capturing<R: Role<Command = C>>(
        name: &str,
        rtc: Rtc,
        socket: UdpSocket,
        role: R,
        capture: Option<Arc<RawCapture>>,
    ) -> std::io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let state = Arc::new(PeerState::default());
        let (commands, rx) = mpsc::channel();
        state.running.store(true, Ordering::Relaxed);
        let thread_state = state.clone();
        let join = thread::Builder::new().name(name.into()).spawn(move || {
            let state = thread_state;
            let result = catch_unwind(AssertUnwindSafe(|| {
                run(
                    rtc,
                    &socket,
                    local_addr,
                    role,
                    &state,
                    &rx,
                    capture.as_deref(),
                )
            }));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => state.set_error(e.to_string()),
                Err(panic) => {
                    state.set_error(format!("peer thread panicked: {}", panic_message(&*panic)));
                }
            }
            state.running.store(false, Ordering::Relaxed);
            state.ice_connected.store(false, Ordering::Relaxed);
        })?;
        Ok(Self {
            state,
            commands,
            join: Some(join),
            local_addr,
        })
    }

    pub(crate) fn state(&self) -> &Arc<PeerState> {
        &self.state
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a command for the role; false if the thread has ended.
    pub(crate) fn send(&self, command: C) -> bool {
        self.commands.send(command).is_ok()
    }
}

impl<C> PeerThread<C> {
    /// Stops the loop and joins the thread (bounded: the loop checks the flag every pass).
    pub(crate) fn stop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            // The thread catches its own panics, so join only fails on a double panic.
            let _ = join.join();
        }
    }
}

impl<C> Drop for PeerThread<C> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Errors that end a peer loop.
#[derive(Debug, thiserror::Error)]
enum LoopError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("rtc: {0}")]
    Rtc(#[from] RtcError),
}

fn run<R: Role>(
    mut rtc: Rtc,
    socket: &UdpSocket,
    local: SocketAddr,
    mut role: R,
    state: &PeerState,
    commands: &Receiver<R::Command>,
    capture: Option<&RawCapture>,
) -> Result<(), LoopError> {
    let mut buf = vec![0_u8; RECV_BUFFER];
    while !state.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Ok(command) = commands.try_recv() {
            role.on_command(now, &mut rtc, command);
        }
        role.drive(now, wallclock_us(), &mut rtc);
        rtc.handle_input(Input::Timeout(now))?;
        let rtc_deadline = drain(&mut rtc, socket, &mut role, state)?;
        if !rtc.is_alive() {
            break;
        }

        let deadline = [Some(rtc_deadline), role.next_due(), Some(now + MAX_WAIT)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            continue;
        }
        socket.set_read_timeout(Some(wait))?;
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                state.datagrams_in.fetch_add(1, Ordering::Relaxed);
                let arrived = Instant::now();
                if let Some(capture) = capture {
                    capture.record(arrived, source, &buf[..n]);
                }
                if !role.accept_datagram(arrived, &mut rtc, &buf[..n]) {
                    continue;
                }
                let Some(input) = receive_input(arrived, source, local, &buf[..n]) else {
                    continue;
                };
                if let Err(e) = rtc.handle_input(input) {
                    tracing::debug!("rejected datagram from {source}: {e}");
                }
                drain(&mut rtc, socket, &mut role, state)?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock
                        | ErrorKind::TimedOut
                        | ErrorKind::Interrupted
                        | ErrorKind::ConnectionRefused
                        | ErrorKind::ConnectionReset
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Polls the `Rtc` until it asks to be woken at a time, sending and dispatching on the way.
fn drain<R: Role>(
    rtc: &mut Rtc,
    socket: &UdpSocket,
    role: &mut R,
    state: &PeerState,
) -> Result<Instant, LoopError> {
    loop {
        match rtc.poll_output()? {
            Output::Timeout(t) => return Ok(t),
            Output::Transmit(t) => {
                // UDP send errors (e.g. a full buffer) are loss, as on a real network.
                if socket.send_to(&t.contents, t.destination).is_ok() {
                    state.datagrams_out.fetch_add(1, Ordering::Relaxed);
                }
            }
            Output::Event(event) => {
                match &event {
                    Event::IceConnectionStateChange(s) => {
                        let up = matches!(
                            s,
                            IceConnectionState::Connected | IceConnectionState::Completed
                        );
                        state.ice_connected.store(up, Ordering::Relaxed);
                    }
                    Event::Connected => state.connected.store(true, Ordering::Relaxed),
                    _ => {}
                }
                role.on_event(Instant::now(), rtc, event);
            }
        }
    }
}

/// The `Rtc` input for datagram `data` from `source` to `local`; `None` when str0m cannot
/// take it (a datagram it does not recognise).
pub(crate) fn receive_input(
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

/// Microseconds since the Unix epoch: the send and arrival times of the test pattern.
pub(crate) fn wallclock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A well-formed SDP offer as a publisher (`Whip`: sendonly) or subscriber (`Whep`: recvonly)
/// would send, for requests that are meant to fail for other reasons. The offering `Rtc` is
/// thrown away, so no media will ever follow.
pub fn sample_offer(endpoint: Endpoint) -> Result<String, crate::Error> {
    let mut rtc = client_rtc(SocketAddr::from(([127, 0, 0, 1], 9)))?;
    let dir = match endpoint {
        Endpoint::Whip => Direction::SendOnly,
        Endpoint::Whep => Direction::RecvOnly,
    };
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, dir, None, None, None);
    change.add_media(MediaKind::Video, dir, None, None, None);
    let (offer, _pending) = change
        .apply()
        .ok_or_else(|| crate::Error::Sdp("no changes to offer".into()))?;
    Ok(offer.to_sdp_string())
}
