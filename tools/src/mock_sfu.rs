//! A minimal in-process SFU (one room, std HTTP, one str0m session per thread) so the peers can
//! be tested end to end without the real server. It forwards the publisher's audio and its
//! video (the "f" layer under simulcast) to every subscriber, rewriting sequence numbers, and
//! starts each subscriber's video at a keyframe, asking the publisher for one once the
//! subscriber is connected.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Rtc};

use crate::pattern::{self, PayloadKind};
use crate::peer::{self, PeerThread, Role};

#[derive(Debug, Clone)]
struct Forward {
    kind: MediaKind,
    rtp_time: u32,
    marker: bool,
    keyframe_start: bool,
    payload: Arc<[u8]>,
}

#[derive(Debug, Default)]
struct Room {
    subscribers: Mutex<Vec<Sender<Forward>>>,
    keyframe_wanted: AtomicBool,
}

/// The mock server; dropping it leaves its threads to die with the test process.
#[derive(Debug)]
pub(crate) struct MockSfu {
    pub(crate) base_url: String,
    stop: Arc<AtomicBool>,
}

impl Drop for MockSfu {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Sessions = Arc<Mutex<HashMap<String, PeerThread<()>>>>;

impl MockSfu {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind http");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let room = Arc::new(Room::default());
        let sessions: Sessions = Arc::default();
        let next_id = Arc::new(AtomicU64::new(1));
        let stop_http = stop.clone();
        thread::spawn(move || {
            while !stop_http.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &room, &sessions, &next_id);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
            if let Ok(mut s) = sessions.lock() {
                s.clear();
            }
        });
        Self {
            base_url: format!("http://{addr}/"),
            stop,
        }
    }
}

fn serve(
    stream: TcpStream,
    room: &Arc<Room>,
    sessions: &Sessions,
    next_id: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut content_length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;

    let (status, location, reply) = match method.as_str() {
        "POST" => {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let offer = String::from_utf8_lossy(&body).to_string();
            match open_session(&path, &offer, room) {
                Some((answer, thread)) => {
                    let location = format!("{path}/{id}");
                    if let Ok(mut s) = sessions.lock() {
                        s.insert(location.clone(), thread);
                    }
                    ("201 Created", Some(location), answer)
                }
                None => ("400 Bad Request", None, "bad offer".to_string()),
            }
        }
        "DELETE" => {
            let removed = sessions.lock().ok().and_then(|mut s| s.remove(&path));
            match removed {
                Some(mut t) => {
                    t.stop();
                    ("200 OK", None, String::new())
                }
                None => ("404 Not Found", None, "unknown session".to_string()),
            }
        }
        _ => ("405 Method Not Allowed", None, String::new()),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n",
        reply.len()
    )?;
    if let Some(l) = location {
        write!(out, "Location: {l}\r\nContent-Type: application/sdp\r\n")?;
    }
    write!(out, "Connection: close\r\n\r\n{reply}")?;
    out.flush()
}

fn open_session(path: &str, offer: &str, room: &Arc<Room>) -> Option<(String, PeerThread<()>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    let local: SocketAddr = socket.local_addr().ok()?;
    let mut rtc = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_crypto_provider(peer::crypto_provider())
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").ok()?);
    let offer = SdpOffer::from_sdp_string(offer).ok()?;
    let answer = rtc.sdp_api().accept_offer(offer).ok()?.to_sdp_string();
    let thread = if path.starts_with("/whip/") {
        let role = MockPublisher {
            room: room.clone(),
            video_mid: None,
        };
        PeerThread::spawn("mock-publisher", rtc, socket, role).ok()?
    } else {
        let (tx, rx) = mpsc::channel();
        if let Ok(mut subs) = room.subscribers.lock() {
            subs.push(tx);
        }
        let role = MockSubscriber {
            room: room.clone(),
            last_keyframe_request: None,
            rx,
            mids: HashMap::new(),
            seq: HashMap::new(),
            video_started: false,
        };
        PeerThread::spawn("mock-subscriber", rtc, socket, role).ok()?
    };
    Some((answer, thread))
}

struct MockPublisher {
    room: Arc<Room>,
    video_mid: Option<Mid>,
}

impl Role for MockPublisher {
    type Command = ();

    fn drive(&mut self, _now: Instant, _wallclock_us: u64, rtc: &mut Rtc) {
        let Some(mid) = self.video_mid else { return };
        if self.room.keyframe_wanted.swap(false, Ordering::Relaxed) {
            let mut api = rtc.direct_api();
            let rid = api
                .stream_rx_by_mid(mid, Some(Rid::from("f")))
                .is_some()
                .then(|| Rid::from("f"));
            if let Some(rx) = api.stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        None
    }

    fn on_event(&mut self, _now: Instant, rtc: &mut Rtc, event: Event) {
        let Event::RtpPacket(p) = event else { return };
        let (mid, rid) = match rtc.direct_api().stream_rx(&p.header.ssrc) {
            Some(s) => (s.mid(), s.rid()),
            None => return,
        };
        let Some(kind) = rtc.media(mid).map(|m| m.kind()) else {
            return;
        };
        if kind == MediaKind::Video {
            self.video_mid = Some(mid);
            if rid.is_some_and(|r| &*r != "f") {
                return;
            }
        }
        let keyframe_start = kind == MediaKind::Video
            && pattern::decode_payload(PayloadKind::Video, &p.payload)
                .is_ok_and(|d| d.starts_keyframe());
        let forward = Forward {
            kind,
            rtp_time: p.header.timestamp,
            marker: p.header.marker,
            keyframe_start,
            payload: p.payload.clone(),
        };
        if let Ok(subs) = self.room.subscribers.lock() {
            for s in subs.iter() {
                let _ = s.send(forward.clone());
            }
        }
    }

    fn on_command(&mut self, _now: Instant, _rtc: &mut Rtc, _command: ()) {}
}

/// Interval of keyframe requests while a subscriber waits for its first keyframe.
const KEYFRAME_RETRY: Duration = Duration::from_millis(300);

struct MockSubscriber {
    room: Arc<Room>,
    last_keyframe_request: Option<Instant>,
    rx: Receiver<Forward>,
    mids: HashMap<MediaKind, Mid>,
    seq: HashMap<Mid, u64>,
    video_started: bool,
}

impl Role for MockSubscriber {
    type Command = ();

    fn drive(&mut self, now: Instant, _wallclock_us: u64, rtc: &mut Rtc) {
        if !rtc.is_connected() {
            // Drop what arrives before the subscriber can take it.
            while self.rx.try_recv().is_ok() {}
            return;
        }
        // Ask for a keyframe once this subscriber can take it, and again until one arrives.
        let retry_due = self
            .last_keyframe_request
            .is_none_or(|t| now.duration_since(t) >= KEYFRAME_RETRY);
        if !self.video_started && retry_due {
            self.room.keyframe_wanted.store(true, Ordering::Relaxed);
            self.last_keyframe_request = Some(now);
        }
        while let Ok(f) = self.rx.try_recv() {
            if f.kind == MediaKind::Video && !self.video_started {
                if !f.keyframe_start {
                    continue;
                }
                self.video_started = true;
            }
            let Some(&mid) = self.mids.get(&f.kind) else {
                continue;
            };
            let Some(&pt) = rtc.media(mid).and_then(|m| m.remote_pts().first()) else {
                continue;
            };
            let seq = self.seq.entry(mid).or_insert(1000);
            *seq += 1;
            let write =
                RtpWrite::new(pt, (*seq).into(), f.rtp_time, now, f.payload).marker(f.marker);
            if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
                tx.write_rtp(write);
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        None
    }

    fn on_event(&mut self, _now: Instant, _rtc: &mut Rtc, event: Event) {
        if let Event::MediaAdded(m) = event {
            self.mids.insert(m.kind, m.mid);
        }
    }

    fn on_command(&mut self, _now: Instant, _rtc: &mut Rtc, _command: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::{Publisher, PublisherConfig, VideoConfig};
    use crate::subscriber::{Subscriber, SubscriberConfig};
    use crate::token::{Grants, dev_token};

    const CONNECT: Duration = Duration::from_secs(5);

    fn token(grants: Grants) -> String {
        dev_token("room", "peer", grants).expect("token")
    }

    fn subscriber(sfu: &MockSfu) -> Subscriber {
        let s = Subscriber::connect(SubscriberConfig::new(
            &sfu.base_url,
            "room",
            &token(Grants::SUBSCRIBE),
        ))
        .expect("subscriber connects");
        assert!(
            s.wait_connected(CONNECT),
            "subscriber ICE/DTLS: {:?}",
            s.state().error()
        );
        s
    }

    #[test]
    fn media_flows_intact_through_the_mock() {
        let sfu = MockSfu::start();
        let early = subscriber(&sfu);
        let video = VideoConfig {
            keyframe_interval: 0,
            ..VideoConfig::default()
        };
        let publisher = Publisher::connect(
            PublisherConfig::new(&sfu.base_url, "room", &token(Grants::PUBLISH)).video(Some(video)),
        )
        .expect("publisher connects");
        assert!(
            publisher.wait_connected(CONNECT),
            "{:?}",
            publisher.state().error()
        );
        assert!(publisher.ice_connected());
        assert!(early.wait_packets(PayloadKind::Video, 30, CONNECT));

        let requests_before = publisher.keyframe_requests();
        let late = subscriber(&sfu);
        assert!(late.wait_packets(PayloadKind::Video, 30, CONNECT));
        assert!(late.wait_packets(PayloadKind::Audio, 10, CONNECT));
        assert!(publisher.keyframe_requests() > requests_before);

        for s in [&early, &late] {
            let r = s.reception();
            assert_eq!(
                r.audio.corrupt + r.video.corrupt,
                0,
                "{:?}",
                r.first_corruption
            );
            assert!(
                r.first_packet(PayloadKind::Video)
                    .is_some_and(|p| p.starts_keyframe())
            );
            for kind in [PayloadKind::Audio, PayloadKind::Video] {
                let streams = r.streams(kind);
                assert_eq!(streams.len(), 1, "{kind}: {streams:?}");
                assert!(streams[0].is_clean(), "{kind}: {streams:?}");
                assert_eq!(streams[0].seq_offsets, 1);
                assert_eq!(streams[0].timestamp_offsets, 1);
            }
        }
        let stats = publisher.stats();
        assert_eq!(stats.write_failures, 0);
        assert!(stats.keyframes[0] >= 2, "{stats:?}");
        publisher.close().expect("delete publisher");
        early.close().expect("delete subscriber");
        late.close().expect("delete subscriber");
    }

    #[test]
    fn simulcast_layers_are_all_sent() {
        let sfu = MockSfu::start();
        let sub = subscriber(&sfu);
        let video = VideoConfig {
            simulcast: true,
            ..VideoConfig::default()
        };
        let publisher = Publisher::connect(
            PublisherConfig::new(&sfu.base_url, "room", &token(Grants::PUBLISH))
                .audio(false)
                .video(Some(video)),
        )
        .expect("publisher connects");
        assert!(publisher.wait_connected(CONNECT));
        assert!(sub.wait_packets(PayloadKind::Video, 60, CONNECT));
        let stats = publisher.stats();
        assert!(stats.video_packets.iter().all(|n| *n > 0), "{stats:?}");
        let r = sub.reception();
        let streams = r.streams(PayloadKind::Video);
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].layers, [2].into_iter().collect());
        assert_eq!(r.video.corrupt, 0, "{:?}", r.first_corruption);
        assert_eq!(r.audio.packets, 0);
    }

    #[test]
    fn subscriber_pli_reaches_the_publisher() {
        let sfu = MockSfu::start();
        let sub = subscriber(&sfu);
        let publisher = Publisher::connect(
            PublisherConfig::new(&sfu.base_url, "room", &token(Grants::PUBLISH)).audio(false),
        )
        .expect("publisher connects");
        assert!(sub.wait_packets(PayloadKind::Video, 10, CONNECT));
        // The mock does not relay PLIs; the subscriber's own str0m must still send one.
        assert!(sub.request_keyframe());
        assert!(peer::wait_until(CONNECT, || sub
            .reception()
            .keyframe_requests_sent
            == 1));
        drop(publisher);
    }
}
