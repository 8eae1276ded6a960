//! The bare loop: what one core does when forwarding is nothing but receive → decrypt once →
//! for each subscriber, encrypt and send. Same cipher and library as the node's SRTP
//! (AES-128-GCM, aws-lc), one `sendto` per datagram, no str0m, no sessions, no rooms. The
//! node's rate is reported as a ratio of this one, measured on the same core in the same run.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::srtp::{self, GcmContext, RTP_HEADER};

/// The bare loop, running on its own thread.
#[derive(Debug)]
pub struct BareLoop {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The loop thread's id (for its CPU time), 0 until it has started.
    tid: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl BareLoop {
    /// Start the loop on `cpu`, forwarding to `sinks`.
    pub fn start(cpu: usize, sinks: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(8 << 20);
        let _ = socket2::SockRef::from(&socket).set_send_buffer_size(8 << 20);
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU64::new(0));
        let handle = std::thread::Builder::new()
            .name("bare-loop".into())
            .spawn({
                let (stop, tid) = (stop.clone(), tid.clone());
                move || {
                    if let Err(e) = sfu_core::affinity::pin_current_thread(cpu) {
                        eprintln!("bare loop: cannot pin to CPU {cpu}: {e}");
                    }
                    tid.store(current_tid(), Ordering::Relaxed);
                    run(&socket, &sinks, &stop);
                }
            })
            .context("cannot start the bare loop")?;
        // Its CPU time is read from its thread id.
        let started = std::time::Instant::now();
        while tid.load(Ordering::Relaxed) == 0 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(5) && !handle.is_finished(),
                "the bare loop did not start"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Self {
            addr,
            stop,
            tid,
            handle: Some(handle),
        })
    }

    /// The loop thread's CPU time so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        crate::node::own_thread_cpu(self.tid.load(Ordering::Relaxed))
    }
}

impl Drop for BareLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(socket: &UdpSocket, sinks: &[SocketAddr], stop: &AtomicBool) {
    let ingress = GcmContext::new(0);
    let egress: Vec<GcmContext> = (1..=sinks.len() as u32).map(GcmContext::new).collect();
    let mut seqs = vec![0u16; sinks.len()];
    let mut packet = vec![0u8; 2048];
    let mut out = Vec::with_capacity(2048);
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = socket.recv(&mut packet) else {
            continue; // the read timeout: look at `stop`
        };
        let Some(len) = ingress.open(&mut packet[..n]) else {
            continue;
        };
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let payload = &packet[RTP_HEADER..RTP_HEADER + len];
        for (i, to) in sinks.iter().enumerate() {
            out.clear();
            srtp::rtp_header(&mut out, 96, seqs[i], timestamp, 0x5000_0000 + i as u32);
            seqs[i] = seqs[i].wrapping_add(1);
            out.extend_from_slice(payload);
            egress[i].seal(&mut out);
            let _ = socket.send_to(&out, to);
        }
    }
}

/// This thread's id, from `/proc/thread-self` (a link to `<pid>/task/<tid>`).
fn current_tid() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}
