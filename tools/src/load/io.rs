//! The socket layer under the shards, through `quinn-udp` (which holds the `unsafe` system-call
//! code): batched receives (`recvmmsg`, GRO-coalesced datagrams split by their stride) and
//! sends that put a burst of equal-size datagrams to one destination into one `sendmsg` with
//! UDP GSO. Falls back to one `send_to` per datagram when GSO is off or unavailable.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use mio::net::UdpSocket;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

/// Datagrams one receive call may return.
pub const RECV_BATCH: usize = 8;

/// Bytes of one receive slot: a GRO-coalesced train can be up to 64 KiB.
const RECV_SLOT: usize = 64 * 1024;

/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const MAX_SEGMENTS: usize = 64;

/// Most bytes in one GSO send (an IP datagram's payload limit, less headers).
const MAX_GSO_BYTES: usize = 65_000;

/// Send-side counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendCounters {
    pub datagrams: u64,
    pub bytes: u64,
    /// Datagrams the kernel refused (full send buffer, unreachable): lost on our side.
    pub errors: u64,
    /// GSO system calls and the datagrams they carried.
    pub gso_sends: u64,
    pub gso_datagrams: u64,
}

/// A per-shard buffer collecting one peer's transmits into GSO trains.
#[derive(Debug)]
pub struct SendBatch {
    gso: bool,
    buf: Vec<u8>,
    destination: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// The last datagram added was shorter than `segment`: the train is closed.
    closed: bool,
    pub counters: SendCounters,
}

impl SendBatch {
    pub fn new(gso: bool) -> Self {
        Self {
            gso,
            buf: Vec::with_capacity(MAX_GSO_BYTES),
            destination: None,
            segment: 0,
            count: 0,
            closed: false,
            counters: SendCounters::default(),
        }
    }

    /// Queues a datagram; sends what is queued first when this one cannot join the train.
    pub fn push(
        &mut self,
        socket: &UdpSocket,
        state: &UdpSocketState,
        destination: SocketAddr,
        datagram: &[u8],
    ) {
        if !self.gso || state.max_gso_segments() < 2 {
            self.send_one(socket, destination, datagram);
            return;
        }
        let fits = self.destination == Some(destination)
            && !self.closed
            && datagram.len() <= self.segment
            && self.count < MAX_SEGMENTS.min(state.max_gso_segments())
            && self.buf.len() + datagram.len() <= MAX_GSO_BYTES;
        if !fits {
            self.flush(socket, state);
            self.destination = Some(destination);
            self.segment = datagram.len();
        }
        self.buf.extend_from_slice(datagram);
        self.count += 1;
        // GSO allows a shorter last segment only.
        self.closed = datagram.len() < self.segment;
    }

    /// Sends whatever is queued.
    pub fn flush(&mut self, socket: &UdpSocket, state: &UdpSocketState) {
        let Some(destination) = self.destination.take() else {
            return;
        };
        let count = std::mem::take(&mut self.count);
        self.closed = false;
        if count == 1 {
            let buf = std::mem::take(&mut self.buf);
            self.send_one(socket, destination, &buf);
            self.buf = buf;
            self.buf.clear();
            return;
        }
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &self.buf,
            segment_size: Some(self.segment),
            src_ip: None,
        };
        match state.try_send(UdpSockRef::from(socket), &transmit) {
            Ok(()) => {
                self.counters.datagrams += count as u64;
                self.counters.bytes += self.buf.len() as u64;
                self.counters.gso_sends += 1;
                self.counters.gso_datagrams += count as u64;
            }
            Err(_) if state.max_gso_segments() < 2 => {
                // The kernel or device refused GSO; quinn-udp turned it off. Resend one by one.
                let buf = std::mem::take(&mut self.buf);
                for datagram in buf.chunks(self.segment) {
                    self.send_one(socket, destination, datagram);
                }
                self.buf = buf;
            }
            Err(_) => self.counters.errors += count as u64,
        }
        self.buf.clear();
    }

    fn send_one(&mut self, socket: &UdpSocket, destination: SocketAddr, datagram: &[u8]) {
        match socket.send_to(datagram, destination) {
            Ok(_) => {
                self.counters.datagrams += 1;
                self.counters.bytes += datagram.len() as u64;
            }
            // Full buffers and ICMP errors are loss, as on a real network.
            Err(_) => self.counters.errors += 1,
        }
    }
}

/// Per-shard receive buffers.
#[derive(Debug)]
pub struct RecvBuffers {
    buf: Vec<u8>,
    meta: [RecvMeta; RECV_BATCH],
    filled: usize,
}

impl Default for RecvBuffers {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBuffers {
    pub fn new() -> Self {
        Self {
            buf: vec![0; RECV_SLOT * RECV_BATCH],
            meta: [RecvMeta::default(); RECV_BATCH],
            filled: 0,
        }
    }

    /// Reads up to [`RECV_BATCH`] buffers from `socket`; returns how many were filled
    /// (`WouldBlock` when none was waiting).
    pub fn recv(&mut self, socket: &UdpSocket, state: &UdpSocketState) -> io::Result<usize> {
        self.filled = 0;
        let mut slots = self.buf.chunks_mut(RECV_SLOT);
        let mut iovs: [IoSliceMut<'_>; RECV_BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or_default()));
        let n = state.recv(UdpSockRef::from(socket), &mut iovs, &mut self.meta)?;
        self.filled = n;
        Ok(n)
    }

    /// The datagrams of the last [`recv`](Self::recv), GRO trains split: `(source, bytes)`.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta[..self.filled]
            .iter()
            .enumerate()
            .flat_map(move |(i, meta)| {
                let start = i * RECV_SLOT;
                let data = &self.buf[start..start + meta.len.min(RECV_SLOT)];
                let stride = if meta.stride == 0 {
                    data.len().max(1)
                } else {
                    meta.stride
                };
                data.chunks(stride).map(move |d| (meta.addr, d))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdSocket;
    use std::time::{Duration, Instant};

    fn pair() -> (UdpSocket, UdpSocketState, StdSocket) {
        let tx = StdSocket::bind("127.0.0.1:0").expect("bind");
        tx.set_nonblocking(true).expect("nonblocking");
        let tx = UdpSocket::from_std(tx);
        let state = UdpSocketState::new(UdpSockRef::from(&tx)).expect("state");
        let rx = StdSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        (tx, state, rx)
    }

    fn receive(rx: &StdSocket, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0; 2048];
        let deadline = Instant::now() + Duration::from_secs(2);
        while out.len() < n && Instant::now() < deadline {
            if let Ok(len) = rx.recv(&mut buf) {
                out.push(buf[..len].to_vec());
            }
        }
        out
    }

    #[test]
    fn a_burst_of_equal_datagrams_arrives_intact_with_and_without_gso() {
        for gso in [true, false] {
            let (tx, state, rx) = pair();
            let to = rx.local_addr().expect("addr");
            let mut batch = SendBatch::new(gso);
            // Five equal datagrams, a shorter last one, then a longer one (a new train).
            let mut sent = Vec::new();
            for i in 0..5_u8 {
                sent.push(vec![i; 1200]);
            }
            sent.push(vec![9; 300]);
            sent.push(vec![10; 1300]);
            for d in &sent {
                batch.push(&tx, &state, to, d);
            }
            batch.flush(&tx, &state);
            let got = receive(&rx, sent.len());
            assert_eq!(got, sent, "gso {gso}");
            assert_eq!(batch.counters.datagrams, 7);
            assert_eq!(batch.counters.errors, 0);
            if gso && state.max_gso_segments() > 1 {
                assert_eq!(batch.counters.gso_sends, 1, "one train of six");
                assert_eq!(batch.counters.gso_datagrams, 6);
            } else {
                assert_eq!(batch.counters.gso_sends, 0);
            }
        }
    }

    #[test]
    fn receive_batches_return_every_datagram() {
        let (tx, state, rx) = pair();
        let rx_addr = rx.local_addr().expect("addr");
        rx.set_nonblocking(true).expect("nonblocking");
        let rx = UdpSocket::from_std(rx);
        let rx_state = UdpSocketState::new(UdpSockRef::from(&rx)).expect("state");
        let mut batch = SendBatch::new(true);
        for i in 0..20_u8 {
            batch.push(&tx, &state, rx_addr, &[i; 100]);
        }
        batch.flush(&tx, &state);
        let mut bufs = RecvBuffers::new();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < 20 && Instant::now() < deadline {
            if bufs.recv(&rx, &rx_state).is_ok() {
                for (from, d) in bufs.datagrams() {
                    assert_eq!(from, tx.local_addr().expect("addr"));
                    got.push(d.to_vec());
                }
            }
        }
        let want: Vec<Vec<u8>> = (0..20_u8).map(|i| vec![i; 100]).collect();
        assert_eq!(got, want);
    }
}
