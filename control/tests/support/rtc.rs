//! A test client of the WebSocket room protocol (docs/signaling.md), and str0m peers that make
//! real SDP offers for it, as the room tests (`rtc.rs`, `rtc_cluster.rs`) use them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};
use tokio_tungstenite::tungstenite::Message;
use tools::load::{PeerFailure, Protocol, SdpClient, SessionHandle};
use tools::token::{Grants, dev_token};

use super::Server;

/// How long any one expected message may take: generous, the machines are shared.
pub const WAIT: Duration = Duration::from_secs(15);

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One socket of the room protocol, as a test client.
pub struct Client {
    pub ws: Ws,
    /// Messages read while waiting for another one, in order.
    pub backlog: VecDeque<Value>,
    pub next_req: u64,
}

fn ws_url(server: &Server, room: &str) -> String {
    format!("{}/rtc/{room}", server.base_url.trim_end_matches('/')).replacen("http://", "ws://", 1)
}

impl Client {
    pub async fn connect(server: &Server, room: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(server, room))
            .await
            .expect("WebSocket upgrade");
        Self {
            ws,
            backlog: VecDeque::new(),
            next_req: 1,
        }
    }

    /// Connect and join as `identity` with every grant; returns the client and `joined`.
    pub async fn join(server: &Server, room: &str, identity: &str) -> (Self, Value) {
        Self::join_with(server, room, identity, Grants::PUBLISH_SUBSCRIBE).await
    }

    /// Connect and join as `identity` with `grants`; returns the client and `joined`.
    pub async fn join_with(
        server: &Server,
        room: &str,
        identity: &str,
        grants: Grants,
    ) -> (Self, Value) {
        let mut c = Self::connect(server, room).await;
        let token = dev_token(room, identity, grants).expect("token");
        let joined = c
            .request(
                json!({"type": "join", "v": 1, "token": token, "name": identity.to_uppercase()}),
            )
            .await;
        assert_eq!(joined["type"], "joined", "{identity} joins: {joined}");
        assert!(
            c.backlog.is_empty(),
            "nothing comes before joined: {:?}",
            c.backlog
        );
        (c, joined)
    }

    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send");
    }

    /// Send `message` with a fresh `req` and wait for the answer carrying it.
    pub async fn request(&mut self, mut message: Value) -> Value {
        let req = self.next_req;
        self.next_req += 1;
        message["req"] = json!(req);
        self.send(message).await;
        self.expect_where(|m| m["req"] == json!(req)).await
    }

    /// The next message from the server (or `None` when the socket closed: then the close
    /// frame's code, if any, is returned as `{"closed": code}`).
    pub async fn next(&mut self) -> Value {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        self.read(Instant::now() + WAIT).await
    }

    /// The next message from the socket; fails the test if none comes before `deadline`.
    async fn read(&mut self, deadline: Instant) -> Value {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("no message within the deadline; before: {:?}", self.backlog)
                });
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str()).expect("server messages are JSON");
                }
                Some(Ok(Message::Close(frame))) => {
                    return json!({"closed": frame.map(|f| u16::from(f.code))});
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return json!({"closed": null}),
            }
        }
    }

    /// The first message matching `pred`; the others read meanwhile stay queued.
    pub async fn expect_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.expect_where_within(WAIT, pred).await
    }

    /// The first message matching `pred` within `wait`; the others read meanwhile stay
    /// queued.
    pub async fn expect_where_within(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(at) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(at).expect("present");
        }
        let deadline = Instant::now() + wait;
        loop {
            let m = self.read(deadline).await;
            if pred(&m) {
                return m;
            }
            assert!(
                m.get("closed").is_none(),
                "socket closed while waiting: {m}; before: {:?}",
                self.backlog
            );
            self.backlog.push_back(m);
        }
    }

    pub async fn expect(&mut self, kind: &str) -> Value {
        self.expect_where(|m| m["type"] == kind).await
    }

    /// The next `n` `subscribed` messages as (track, mid), sorted; each must carry the
    /// default layer and not be paused.
    pub async fn subscribed(&mut self, n: usize) -> Vec<(String, String)> {
        let mut carried = Vec::new();
        for _ in 0..n {
            let s = self.expect("subscribed").await;
            assert_eq!(
                (s["max_layer"].as_u64(), s["paused"].as_bool()),
                (Some(2), Some(false)),
                "{s}"
            );
            let field = |k: &str| s[k].as_str().expect("a string").to_string();
            carried.push((field("track"), field("mid")));
        }
        carried.sort();
        carried
    }

    /// Publish a microphone and a camera from a new str0m offerer that takes the answer:
    /// the offerer, the `publish_answer`, and the offer's two mids.
    pub async fn publish_mic_and_camera(&mut self) -> (Offerer, Value, Vec<String>) {
        let mut offerer = Offerer::new();
        let (sdp, mids) = publish_offer(&mut offerer);
        let answer = self
            .request(json!({"type": "publish", "sdp": sdp,
                "tracks": [{"mid": mids[0], "source": "microphone"}, {"mid": mids[1], "source": "camera"}]}))
            .await;
        assert_eq!(answer["type"], "publish_answer", "{answer}");
        offerer.accept(&answer);
        (offerer, answer, mids)
    }

    /// Wait until the socket closes; its close code.
    pub async fn closed(&mut self) -> Option<u64> {
        let m = self.expect_where(|m| m.get("closed").is_some()).await;
        m["closed"].as_u64()
    }

    /// Everything queued so far, after a round trip (a `ping`): a barrier for "nothing else
    /// came".
    pub async fn drain(&mut self) -> Vec<Value> {
        self.request(json!({"type": "ping"})).await;
        self.backlog.drain(..).collect()
    }
}

/// A str0m peer that makes offers (and takes answers) as a browser would.
pub struct Offerer {
    rtc: Rtc,
    pending: Option<SdpPendingOffer>,
}

impl Offerer {
    pub fn new() -> Self {
        let mut rtc = Rtc::new(Instant::now());
        let candidate =
            Candidate::host("127.0.0.1:9".parse().expect("addr"), "udp").expect("candidate");
        rtc.add_local_candidate(candidate);
        Self { rtc, pending: None }
    }

    /// An offer adding `media` sections (the earlier ones stay).
    pub fn offer(&mut self, media: &[(MediaKind, Direction)]) -> (String, Vec<String>) {
        let mut change = self.rtc.sdp_api();
        let mids: Vec<String> = media
            .iter()
            .map(|(kind, dir)| change.add_media(*kind, *dir, None, None, None).to_string())
            .collect();
        let (offer, pending) = change.apply().expect("an offer");
        self.pending = Some(pending);
        (offer.to_sdp_string(), mids)
    }

    pub fn accept(&mut self, answer: &Value) {
        let sdp = answer["sdp"].as_str().expect("an answer has sdp");
        let answer = SdpAnswer::from_sdp_string(sdp).expect("the answer parses");
        let pending = self.pending.take().expect("an offer is pending");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the answer fits the offer");
    }
}

pub fn publish_offer(p: &mut Offerer) -> (String, Vec<String>) {
    p.offer(&[
        (MediaKind::Audio, Direction::SendOnly),
        (MediaKind::Video, Direction::SendOnly),
    ])
}

pub fn recv_sections(audio: usize, video: usize) -> Vec<(MediaKind, Direction)> {
    let mut v = vec![(MediaKind::Audio, Direction::RecvOnly); audio];
    v.extend(std::iter::repeat_n(
        (MediaKind::Video, Direction::RecvOnly),
        video,
    ));
    v
}

pub fn ids(tracks: &Value) -> Vec<String> {
    tracks
        .as_array()
        .expect("tracks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

/// A joined room client as a `tools` signaling dialect: a real WebRTC peer of the test tools
/// (ICE, DTLS, media flowing) becomes that participant's publisher connection, its offer sent
/// as `publish` and the answer handed back. Only `publish` is spoken. The client stays usable
/// for reading what the server tells the participant ([`RoomSignal::client`]).
pub struct RoomSignal {
    runtime: tokio::runtime::Handle,
    client: tokio::sync::Mutex<Client>,
}

impl RoomSignal {
    /// Call from the test's runtime.
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Self {
            runtime: tokio::runtime::Handle::current(),
            client: tokio::sync::Mutex::new(client),
        })
    }

    pub async fn client(&self) -> tokio::sync::MutexGuard<'_, Client> {
        self.client.lock().await
    }
}

impl std::fmt::Debug for RoomSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomSignal")
    }
}

impl Protocol for RoomSignal {
    fn name(&self) -> &'static str {
        "room"
    }

    /// Blocks on the test's runtime: call it (through `Publisher::connect_via`) inside
    /// `tokio::task::block_in_place`.
    fn publish(
        &self,
        _room: &str,
        _identity: &str,
        client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        let sdp = client.create_offer()?;
        let answer = self.runtime.block_on(async {
            self.client
                .lock()
                .await
                .request(json!({"type": "publish", "sdp": sdp}))
                .await
        });
        match answer["sdp"].as_str() {
            Some(sdp) if answer["type"] == "publish_answer" => client.accept_answer(sdp)?,
            _ => return Err(PeerFailure::Signaling(answer.to_string())),
        }
        Ok(SessionHandle {
            id: "room".into(),
            token: None,
            node: None,
        })
    }

    fn subscribe(
        &self,
        _room: &str,
        _identity: &str,
        _client: &mut dyn SdpClient,
    ) -> Result<SessionHandle, PeerFailure> {
        Err(PeerFailure::Signaling("RoomSignal only publishes".into()))
    }

    /// The participant's sessions end when it leaves; nothing to do per session.
    fn leave(&self, _session: &SessionHandle) -> Result<(), PeerFailure> {
        Ok(())
    }
}
