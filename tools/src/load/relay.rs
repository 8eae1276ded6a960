//! A UDP relay that impairs the path from a server to its clients by a known amount, so tests
//! can check that the load generator measures loss and latency correctly.
//!
//! The relay behaves like a NAT in front of one server address: each client address gets its
//! own upstream socket, so the server still sees one 5-tuple per client. Datagrams from clients
//! go upstream unchanged and at once. Datagrams from the server back to a client are delayed by
//! [`RelayConfig::delay`], and every `drop_every`-th RTP packet (per client) is dropped. STUN,
//! DTLS and RTCP are never dropped, so connection setup and feedback are unaffected.
//!
//! It is a test fixture: one thread per client for receiving from upstream, which is fine for
//! tens of clients and wrong for thousands.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often blocked threads look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// The server address the relay stands in for.
    pub upstream: SocketAddr,
    /// Drop every k-th RTP packet sent to each client (`None`: drop nothing).
    pub drop_every: Option<u64>,
    /// Added to every datagram sent to a client.
    pub delay: Duration,
}

/// What the relay did, summed over all clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounts {
    pub clients: u64,
    pub to_server: u64,
    pub to_clients: u64,
    /// RTP packets toward clients (the ones `drop_every` counts).
    pub rtp_to_clients: u64,
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    clients: AtomicU64,
    to_server: AtomicU64,
    to_clients: AtomicU64,
    rtp_to_clients: AtomicU64,
    dropped: AtomicU64,
}

/// A running relay; stops when dropped.
#[derive(Debug)]
pub struct Relay {
    local: SocketAddr,
    upstream: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
    upstream_threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// A datagram on its way to a client, due at `due`.
#[derive(Debug)]
struct Delayed {
    due: Instant,
    client: SocketAddr,
    bytes: Vec<u8>,
}

impl Relay {
    /// Binds the client-facing socket on `listen` (e.g. `127.0.0.1:0`) and starts relaying.
    pub fn start(listen: SocketAddr, config: RelayConfig) -> io::Result<Relay> {
        if config.drop_every == Some(0) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "drop_every must be at least 1",
            ));
        }
        let socket = UdpSocket::bind(listen)?;
        socket.set_read_timeout(Some(STOP_POLL))?;
        let local = socket.local_addr()?;
        let downstream = socket.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let upstream_threads = Arc::new(Mutex::new(Vec::new()));
        let (delayed_tx, delayed_rx) = mpsc::channel::<Delayed>();

        let sender = {
            let stop = stop.clone();
            let counters = counters.clone();
            thread::Builder::new()
                .name("relay-down".into())
                .spawn(move || send_delayed(&downstream, &delayed_rx, &stop, &counters))?
        };
        let receiver = {
            let stop = stop.clone();
            let counters = counters.clone();
            let upstream_threads = upstream_threads.clone();
            thread::Builder::new()
                .name("relay-up".into())
                .spawn(move || {
                    relay_up(
                        &socket,
                        config,
                        &delayed_tx,
                        &stop,
                        &counters,
                        &upstream_threads,
                    )
                })?
        };
        Ok(Relay {
            local,
            upstream: config.upstream,
            stop,
            counters,
            threads: vec![receiver, sender],
            upstream_threads,
        })
    }

    /// The address clients send to instead of the server's.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server address this relay stands in for.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn counts(&self) -> RelayCounts {
        let c = &self.counters;
        RelayCounts {
            clients: c.clients.load(Ordering::Relaxed),
            to_server: c.to_server.load(Ordering::Relaxed),
            to_clients: c.to_clients.load(Ordering::Relaxed),
            rtp_to_clients: c.rtp_to_clients.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let upstream = std::mem::take(
            &mut *self
                .upstream_threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for t in upstream {
            let _ = t.join();
        }
    }
}

/// Client → server: forwards each client's datagrams through that client's upstream socket,
/// creating it (and its receive thread) on the client's first datagram.
fn relay_up(
    socket: &UdpSocket,
    config: RelayConfig,
    delayed: &Sender<Delayed>,
    stop: &Arc<AtomicBool>,
    counters: &Arc<Counters>,
    threads: &Mutex<Vec<JoinHandle<()>>>,
) {
    let mut upstream: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut buf = [0u8; MAX_DATAGRAM];
    while !stop.load(Ordering::Relaxed) {
        let (n, client) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => {
                tracing::warn!("relay: receive from clients failed: {e}");
                continue;
            }
        };
        let up = match upstream.entry(client) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => match open_upstream(client, config, delayed, stop, counters) {
                Ok((sock, thread)) => {
                    threads
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(thread);
                    counters.clients.fetch_add(1, Ordering::Relaxed);
                    v.insert(sock)
                }
                Err(e) => {
                    tracing::warn!("relay: cannot open upstream socket for {client}: {e}");
                    continue;
                }
            },
        };
        if up.send(&buf[..n]).is_ok() {
            counters.to_server.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open_upstream(
    client: SocketAddr,
    config: RelayConfig,
    delayed: &Sender<Delayed>,
    stop: &Arc<AtomicBool>,
    counters: &Arc<Counters>,
) -> io::Result<(UdpSocket, JoinHandle<()>)> {
    let bind: SocketAddr = if config.upstream.is_ipv4() {
        (std::net::Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(config.upstream)?;
    sock.set_read_timeout(Some(STOP_POLL))?;
    let rx = sock.try_clone()?;
    let delayed = delayed.clone();
    let counters = counters.clone();
    let stop = stop.clone();
    let thread = thread::Builder::new()
        .name("relay-upstream".into())
        .spawn(move || {
            let mut buf = [0u8; MAX_DATAGRAM];
            let mut rtp_seen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = match rx.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if is_timeout(&e) => continue,
                    // ICMP port unreachable from a connected socket: the server is gone for now.
                    Err(_) => continue,
                };
                let bytes = &buf[..n];
                if is_rtp(bytes) {
                    rtp_seen += 1;
                    counters.rtp_to_clients.fetch_add(1, Ordering::Relaxed);
                    if config.drop_every.is_some_and(|k| rtp_seen % k == 0) {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                let item = Delayed {
                    due: Instant::now() + config.delay,
                    client,
                    bytes: bytes.to_vec(),
                };
                if delayed.send(item).is_err() {
                    return;
                }
            }
        })?;
    Ok((sock, thread))
}

/// Server → client: sends each datagram when it is due. The delay is the same for all, so the
/// queue is already in due order.
fn send_delayed(
    socket: &UdpSocket,
    queue: &Receiver<Delayed>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    while !stop.load(Ordering::Relaxed) {
        let item = match queue.recv_timeout(STOP_POLL) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        if item.due > now {
            thread::sleep(item.due - now);
        }
        if socket.send_to(&item.bytes, item.client).is_ok() {
            counters.to_clients.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// RTP as opposed to RTCP, STUN or DTLS (RFC 7983 first byte, RFC 5761 payload type ranges).
fn is_rtp(bytes: &[u8]) -> bool {
    match bytes {
        [first, second, ..] => (128..=191).contains(first) && !(64..=95).contains(&(second & 0x7f)),
        _ => false,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p
    }

    #[test]
    fn classifies_rtp_apart_from_rtcp_stun_and_dtls() {
        assert!(is_rtp(&rtp(1)));
        assert!(is_rtp(&[0x80, 0x80 | 96, 0, 0]), "marker bit set");
        assert!(!is_rtp(&[0x80, 200, 0, 6]), "RTCP sender report");
        assert!(!is_rtp(&[0x81, 205, 0, 3]), "RTCP feedback");
        assert!(!is_rtp(&[0x00, 0x01, 0, 0]), "STUN binding request");
        assert!(!is_rtp(&[22, 0xfe, 0xfd]), "DTLS handshake");
        assert!(!is_rtp(&[0x80]));
    }

    #[test]
    fn delays_and_drops_every_kth_rtp_packet_toward_the_client() -> io::Result<()> {
        let localhost: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let server = UdpSocket::bind(localhost)?;
        server.set_read_timeout(Some(Duration::from_secs(5)))?;
        let delay = Duration::from_millis(30);
        let relay = Relay::start(
            localhost,
            RelayConfig {
                upstream: server.local_addr()?,
                drop_every: Some(4),
                delay,
            },
        )?;
        let client = UdpSocket::bind(localhost)?;
        client.set_read_timeout(Some(Duration::from_secs(5)))?;
        client.send_to(b"hello", relay.local_addr())?;
        let mut buf = [0u8; 64];
        let (n, via) = server.recv_from(&mut buf)?;
        assert_eq!(&buf[..n], b"hello");

        // 12 RTP packets and one RTCP packet back: packets 4, 8 and 12 are dropped.
        let rtcp = [0x80, 200, 0, 6];
        let started = Instant::now();
        for seq in 1..=12u16 {
            server.send_to(&rtp(seq), via)?;
        }
        server.send_to(&rtcp, via)?;
        let mut seqs = Vec::new();
        let mut got_rtcp = false;
        let mut first_at = None;
        while seqs.len() < 9 || !got_rtcp {
            let n = client.recv(&mut buf)?;
            first_at.get_or_insert_with(Instant::now);
            if is_rtp(&buf[..n]) {
                seqs.push(u16::from_be_bytes([buf[2], buf[3]]));
            } else {
                got_rtcp = true;
            }
        }
        assert_eq!(seqs, [1, 2, 3, 5, 6, 7, 9, 10, 11]);
        let waited = first_at.map(|t| t - started).unwrap_or_default();
        assert!(
            waited >= delay,
            "first datagram after {waited:?}, delay {delay:?}"
        );
        // The relay counts a datagram after handing it to the kernel, which may be after the
        // client has read it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.counts().to_clients < 10 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let counts = relay.counts();
        assert_eq!(counts.clients, 1);
        assert_eq!(counts.dropped, 3);
        assert_eq!(counts.rtp_to_clients, 12);
        assert_eq!(counts.to_clients, 10);
        Ok(())
    }

    #[test]
    fn rejects_drop_every_zero() {
        let config = RelayConfig {
            upstream: "127.0.0.1:9".parse().expect("address"),
            drop_every: Some(0),
            delay: Duration::ZERO,
        };
        let err = Relay::start("127.0.0.1:0".parse().expect("address"), config);
        assert!(err.is_err());
    }
}
