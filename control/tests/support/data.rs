//! A participant's subscriber connection carrying data channels only, as the SDK opens it at
//! join: a real str0m client (ICE, DTLS, SCTP) on a loopback UDP socket, run by a thread of
//! its own, offered over the room protocol (`subscriber_offer`).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use str0m::change::SdpAnswer;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::rtc::{Client, WAIT};

/// A message the peer received: whether on its reliable channel, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub reliable: bool,
    pub text: String,
}

#[derive(Debug, Default)]
struct Shared {
    /// Open channels: (id, reliable).
    open: Vec<(ChannelId, bool)>,
    received: Vec<Received>,
    failed: Option<String>,
}

/// One client's data channels through the SFU: a reliable one ("chat") and an unreliable one
/// ("lossy"), each opened by the client before its offer.
pub struct DataPeer {
    outbox: mpsc::Sender<(bool, String)>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DataPeer {
    /// Offer `client`'s subscriber connection with the two channels and no media, connect it,
    /// and wait until the node has opened both.
    pub async fn connect(client: &mut Client) -> DataPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
        let addr = socket.local_addr().expect("its address");
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .expect("a read timeout");
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
        let mut change = rtc.sdp_api();
        change.add_channel("chat".into());
        change.add_channel_with_config(ChannelConfig {
            label: "lossy".into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..ChannelConfig::default()
        });
        let (offer, pending) = change.apply().expect("an offer with two channels");
        let answer = client
            .request(json!({"type": "subscriber_offer", "sdp": offer.to_sdp_string()}))
            .await;
        assert_eq!(answer["type"], "subscriber_answer", "{answer}");
        let sdp = answer["sdp"].as_str().expect("the answer's SDP");
        let answer = SdpAnswer::from_sdp_string(sdp).expect("an answer str0m can read");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("the answer accepted");

        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (outbox, inbox) = mpsc::channel();
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || run(rtc, socket, inbox, &shared, &stop))
        };
        let peer = DataPeer {
            outbox,
            shared,
            stop,
            thread: Some(thread),
        };
        peer.wait_for("both channels open", |s| s.open.len() == 2)
            .await;
        peer
    }

    /// Send `text` on the reliable channel, or the unreliable one.
    pub fn send(&self, reliable: bool, text: impl Into<String>) {
        self.outbox
            .send((reliable, text.into()))
            .expect("the peer's thread runs");
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().expect("not poisoned").received.clone()
    }

    /// Wait until it has received `n` messages (at most [`WAIT`]); all it received.
    pub async fn wait_received(&self, n: usize) -> Vec<Received> {
        self.wait_for(&format!("{n} messages"), |s| s.received.len() >= n)
            .await;
        self.received()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&Shared) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let s = self.shared.lock().expect("not poisoned");
                if let Some(e) = &s.failed {
                    panic!("data peer failed waiting for {what}: {e}");
                }
                if done(&s) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "data peer: no {what} within {WAIT:?}: {s:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for DataPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The peer's loop: str0m's output to the socket and the shared state, the socket and the
/// outbox into str0m, until stopped or failed.
fn run(
    mut rtc: Rtc,
    socket: UdpSocket,
    inbox: mpsc::Receiver<(bool, String)>,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
) {
    let local = socket.local_addr().expect("its address");
    let mut buf = vec![0u8; 2000];
    let fail = |e: String| shared.lock().expect("not poisoned").failed = Some(e);
    while !stop.load(Ordering::Relaxed) {
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(_)) => break,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(Event::ChannelOpen(id, _))) => {
                    let reliable = rtc
                        .channel(id)
                        .and_then(|c| c.config().map(|c| c.reliability == Reliability::Reliable))
                        .unwrap_or(true);
                    shared
                        .lock()
                        .expect("not poisoned")
                        .open
                        .push((id, reliable));
                }
                Ok(Output::Event(Event::ChannelData(d))) => {
                    let s = &mut *shared.lock().expect("not poisoned");
                    let reliable = s.open.iter().any(|&(id, r)| id == d.id && r);
                    s.received.push(Received {
                        reliable,
                        text: String::from_utf8_lossy(&d.data).into_owned(),
                    });
                }
                Ok(Output::Event(_)) => {}
                Err(e) => return fail(format!("str0m: {e}")),
            }
        }
        while let Ok((reliable, text)) = inbox.try_recv() {
            let id = shared
                .lock()
                .expect("not poisoned")
                .open
                .iter()
                .find(|&&(_, r)| r == reliable)
                .map(|&(id, _)| id);
            let written = id
                .and_then(|id| rtc.channel(id))
                .map(|mut c| c.write(false, text.as_bytes()));
            if !matches!(written, Some(Ok(true))) {
                return fail(format!("cannot write on the channel: {written:?}"));
            }
        }
        let input = match socket.recv_from(&mut buf) {
            Ok((n, source)) => match buf[..n].try_into() {
                Ok(contents) => Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    },
                ),
                Err(_) => continue,
            },
            Err(_) => Input::Timeout(Instant::now()),
        };
        if let Err(e) = rtc.handle_input(input) {
            return fail(format!("str0m input: {e}"));
        }
    }
}
