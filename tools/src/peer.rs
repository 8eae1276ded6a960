//! The owner's side of a synthetic test peer ([`Publisher`](crate::Publisher),
//! [`Subscriber`](crate::Subscriber)): the peer runs in the load generator's runtime, on a
//! [shard](crate::load::shard) of its own, exactly as a load peer does; the owner holds a
//! [`PeerHandle`] to command it and end its session, and reads [`PeerState`] and what the
//! peer shares (stats, reception) as it goes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use str0m::Rtc;

use crate::load::negotiate::{self, Offer, PeerId, PeerPlan, Route};
use crate::load::peer::{PeerCommand, PeerMedia};
use crate::load::protocol::{PeerFailure, Protocol, SessionHandle};
use crate::load::shard::{ShardCommand, ShardHandle};
use crate::reception::Mids;

/// The one peer on a handle's shard.
const PEER: PeerId = PeerId(0);

/// How long a test peer may take to connect (ICE, DTLS) before it gives up. Far above what
/// loopback needs: tests wait with their own, shorter timeouts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection facts a peer publishes to its owner.
#[derive(Debug)]
pub struct PeerState {
    running: AtomicBool,
    ice_connected: AtomicBool,
    connected: AtomicBool,
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Default for PeerState {
    fn default() -> Self {
        Self {
            running: AtomicBool::new(true),
            ice_connected: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            datagrams_in: AtomicU64::new(0),
            datagrams_out: AtomicU64::new(0),
            error: Mutex::new(None),
        }
    }
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

    /// The peer is still running (it ends on an error, a lost connection, or when stopped).
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Datagrams received on the peer's socket.
    pub fn datagrams_in(&self) -> u64 {
        self.datagrams_in.load(Ordering::Relaxed)
    }

    /// Datagrams the peer handed to its socket.
    pub fn datagrams_out(&self) -> u64 {
        self.datagrams_out.load(Ordering::Relaxed)
    }

    /// Why the peer ended, if it ended on a failure.
    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// Waits until media can flow; false on timeout or if the peer ended.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.connected() || !self.running()) && self.connected()
    }

    pub(crate) fn set_ice_connected(&self, up: bool) {
        self.ice_connected.store(up, Ordering::Relaxed);
    }

    pub(crate) fn set_connected(&self) {
        self.connected.store(true, Ordering::Relaxed);
    }

    pub(crate) fn count_in(&self) {
        self.datagrams_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_out(&self) {
        self.datagrams_out.fetch_add(1, Ordering::Relaxed);
    }

    /// The peer ended, on `failure` if it failed.
    pub(crate) fn end(&self, failure: Option<String>) {
        if let Some(e) = failure {
            lock(&self.error).get_or_insert(e);
        }
        self.ice_connected.store(false, Ordering::Relaxed);
        self.running.store(false, Ordering::Relaxed);
    }
}

/// A peer on a shard thread of its own, with its server session. Dropping it stops the thread
/// (bounded: the shard looks at its commands every pass) without telling the server.
#[derive(Debug)]
pub(crate) struct PeerHandle {
    shard: ShardHandle,
    state: Arc<PeerState>,
    local_addr: SocketAddr,
    protocol: Arc<dyn Protocol>,
    session: SessionHandle,
    server_sdp: String,
    deleted: bool,
}

impl PeerHandle {
    /// Negotiates `offer` through `protocol` for `identity` in `room` from a socket on
    /// `bind_ip`, builds the peer's media with `media` from what the answer accepted, and
    /// starts the peer on a shard of its own. Media flows once ICE and DTLS are up.
    pub(crate) fn connect(
        protocol: Arc<dyn Protocol>,
        identity: &str,
        room: &str,
        offer: &Offer,
        bind_ip: IpAddr,
        media: impl FnOnce(&Rtc, Mids) -> Result<PeerMedia, PeerFailure>,
    ) -> Result<Self, PeerFailure> {
        let plan = PeerPlan {
            id: PEER,
            role: offer.role,
            room: 0,
            publisher: 0,
            generation: 0,
        };
        let route = Route::direct(bind_ip);
        let mut peer = negotiate::setup(&plan, identity, room, offer, &route, &*protocol, media)?;
        // Nobody reads the shard's notices: the owner watches the peer's state instead.
        let (notices, _) = crossbeam::channel::unbounded();
        let shard = match ShardHandle::spawn(0, true, CONNECT_TIMEOUT, notices) {
            Ok(shard) => shard,
            Err(e) => {
                let _ = protocol.leave(&peer.session);
                return Err(PeerFailure::Socket(format!(
                    "cannot start the peer's thread: {e}"
                )));
            }
        };
        let handle = Self {
            state: peer.state.clone(),
            local_addr: peer.local,
            session: peer.session.clone(),
            server_sdp: std::mem::take(&mut peer.server_sdp),
            protocol,
            shard,
            deleted: false,
        };
        // A shard takes commands until it is stopped, and only the handle stops it.
        let _ = handle.shard.sender.send(ShardCommand::Add(Box::new(peer)));
        Ok(handle)
    }

    pub(crate) fn state(&self) -> &PeerState {
        &self.state
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The session's URL (WHIP/WHEP `Location`) or protocol-specific id.
    pub(crate) fn location(&self) -> &str {
        &self.session.id
    }

    /// The media node serving the session, when the server names it (`X-Sfu-Node`).
    pub(crate) fn node(&self) -> Option<&str> {
        self.session.node.as_deref()
    }

    /// The SDP the server sent: its answer, or its offer where the server offers.
    pub(crate) fn server_sdp(&self) -> &str {
        &self.server_sdp
    }

    /// Queues a command for the peer; false if it has ended.
    pub(crate) fn command(&self, command: PeerCommand) -> bool {
        self.state.running()
            && self
                .shard
                .sender
                .send(ShardCommand::Peer(PEER, command))
                .is_ok()
    }

    /// Ends the session on the server. Only the first call asks the server.
    pub(crate) fn delete_session(&mut self) -> Result<(), PeerFailure> {
        if std::mem::replace(&mut self.deleted, true) {
            return Ok(());
        }
        self.protocol.leave(&self.session)
    }

    /// Stops the peer and its thread.
    pub(crate) fn stop(&mut self) {
        self.shard.stop();
    }
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.shard.stop();
    }
}

/// Locks data a peer shares with its owner. The data are plain counters and logs, usable even
/// if a holder panicked, so poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
