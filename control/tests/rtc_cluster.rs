//! The WebSocket room protocol (docs/signaling.md) across two control instances sharing one
//! Redis (`[store] redis_url`, `[cluster]`): participants connected to different instances
//! see each other (rosters and room events go through Redis), a participant reaches a media
//! node whose link the other instance holds (its node calls are forwarded through Redis), a
//! join of the same identity on the other instance replaces it, and a participant whose
//! instance dies leaves the others' view once its roster lease runs out. The media node runs
//! in the test process and joins instance A only. Needs `redis-server` (Debian package
//! `redis-server`).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sfu_core::NodeConfig;
use str0m::media::{Direction, MediaKind};
use support::cluster::{TempDir, TestNode};
use support::redis_server::{Redis, SECRET, instance};
use support::rtc::{Client, Offerer, RoomSignal, ids, recv_sections};
use support::{CONNECT_TIMEOUT, Server, wait_until};

/// How long the others may take to see a participant whose instance died leave: its roster
/// entry's lease (`ROSTER_LEASE`, 30 s) plus their next roster read (every 10 s), with room
/// to spare on a loaded machine.
const INSTANCE_DEATH_WAIT: Duration = Duration::from_secs(60);

fn up_nodes(server: &Server) -> f64 {
    server
        .metrics()
        .sum_where("sfu_cluster_nodes", &[("state", "up")])
}

/// Two instances on one Redis, and node `n1` joined to A only (configured by `configure`),
/// up on both.
fn cluster(
    redis: &Redis,
    dir: &TempDir,
    configure: impl FnOnce(&mut NodeConfig),
) -> (Server, Server, TestNode) {
    let a = instance(redis, dir);
    let b = instance(redis, dir);
    let control_a = a
        .log_line("cluster: ")
        .expect("A prints its cluster address");
    let cert: PathBuf = dir.0.join("cert.pem");
    let node = TestNode::start_with("n1", &control_a, &cert, SECRET, configure);
    assert!(
        wait_until(Duration::from_secs(30), || up_nodes(&a) == 1.0
            && up_nodes(&b) == 1.0),
        "n1 is up on A (its link) and on B (through the registry): A {} / B {}\n{}",
        up_nodes(&a),
        up_nodes(&b),
        b.log_tail(30)
    );
    (a, b, node)
}

/// Sessions the test's offerers never connect must outlive the test: without these, the node
/// ends them after 5 s without a datagram (`first_contact_timeout_secs`), and the tracks of a
/// publisher with them.
fn patient(config: &mut NodeConfig) {
    config.first_contact_timeout_secs = 600;
    config.connect_timeout_secs = 600;
}

/// Poll `cond` until it holds or `within` passes; whether it held.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn held(node: &TestNode) -> usize {
    node.node.held_sessions().len()
}

/// [`Client::join`], checking that nothing came before `joined` (it carries the room as it
/// is; no `participant_joined` for those already there).
async fn join(server: &Server, room: &str, identity: &str) -> (Client, Value) {
    let (client, joined) = Client::join(server, room, identity).await;
    assert!(
        client.backlog.is_empty(),
        "{identity}: messages before joined: {:?}",
        client.backlog
    );
    (client, joined)
}

/// `(type, identity, reason)` of a `participant_left`.
fn left(m: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        m["type"].as_str(),
        m["identity"].as_str(),
        m["reason"].as_str(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_on_two_instances_share_a_room() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let (mut a, b, node) = cluster(&redis, &dir, patient);
    let room = "across";

    // 1. Ada joins through A, Bob through B: each sees the other.
    let (mut ada, joined) = join(&a, room, "ada").await;
    assert_eq!(joined["participants"], json!([]), "{joined}");
    let (mut bob, joined) = join(&b, room, "bob").await;
    assert_eq!(
        joined["participants"].as_array().map(Vec::len),
        Some(1),
        "{joined}"
    );
    assert_eq!(joined["participants"][0]["identity"], "ada");
    assert_eq!(joined["participants"][0]["name"], "ADA");
    let event = ada.expect("participant_joined").await;
    assert_eq!(event["participant"]["identity"], "bob", "{event}");

    // 2. Ada publishes through A (her session on n1, A's node); Bob, through B, is told and
    //    subscribes: his session is created on n1 and his sections filled through A.
    let (_ada_pub, answer, _) = ada.publish_mic_and_camera().await;
    let tracks = ids(&answer["tracks"]);
    assert_eq!(tracks.len(), 2, "{answer}");
    let (audio, video) = (tracks[0].clone(), tracks[1].clone());
    let mut published = Vec::new();
    for _ in 0..2 {
        let event = bob.expect("track_published").await;
        assert_eq!(event["track"]["identity"], "ada", "{event}");
        published.push(event["track"]["id"].as_str().expect("id").to_string());
    }
    published.sort();
    let mut want = vec![audio.clone(), video.clone()];
    want.sort();
    assert_eq!(published, want);
    let renegotiate = bob.expect("renegotiate").await;
    assert_eq!(
        (renegotiate["audio"].as_u64(), renegotiate["video"].as_u64()),
        (Some(1), Some(1)),
        "{renegotiate}"
    );
    let mut bob_sub = Offerer::new();
    let (sdp, sub_mids) = bob_sub.offer(&recv_sections(1, 1));
    let answer = bob
        .request(json!({"type": "subscriber_offer", "sdp": sdp}))
        .await;
    assert_eq!(answer["type"], "subscriber_answer", "{answer}");
    bob_sub.accept(&answer);
    assert_eq!(
        answer["slots"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    let carried = bob.subscribed(2).await;
    let mut want = vec![
        (audio.clone(), sub_mids[0].clone()),
        (video.clone(), sub_mids[1].clone()),
    ];
    want.sort();
    assert_eq!(carried, want, "each track on Bob's section of its kind");
    assert!(
        eventually(Duration::from_secs(15), || held(&node) == 2).await,
        "n1 holds Ada's publisher and Bob's subscriber sessions: {}",
        held(&node)
    );
    // A subscription change is a node call from B too.
    let set = bob
        .request(json!({"type": "set_subscription", "track": video, "max_layer": 0}))
        .await;
    assert_eq!(
        (set["type"].as_str(), set["max_layer"].as_u64()),
        (Some("subscription"), Some(0)),
        "{set}"
    );

    // 3. Ada mutes: Bob hears of it through the room feed.
    let muted = ada
        .request(json!({"type": "mute", "track": audio, "muted": true}))
        .await;
    assert_eq!(muted["type"], "track_muted", "{muted}");
    let muted = bob.expect("track_muted").await;
    assert_eq!(
        (
            muted["track"].as_str(),
            muted["identity"].as_str(),
            muted["muted"].as_bool()
        ),
        (Some(audio.as_str()), Some("ada"), Some(true))
    );

    //    Bob joins again, through A: the Bob on B is replaced (his sessions end, through A),
    //    and Ada sees the old Bob leave as replaced, then the new one join.
    let (mut bob2, joined) = join(&a, room, "bob").await;
    assert_eq!(joined["resumed"], false);
    assert_eq!(joined["participants"][0]["identity"], "ada", "{joined}");
    assert_eq!(
        ids(&joined["participants"][0]["tracks"]),
        vec![audio.clone(), video.clone()],
        "{joined}"
    );
    assert_eq!(
        joined["participants"][0]["tracks"][0]["muted"], true,
        "the roster carries the mute: {joined}"
    );
    let e = bob.expect("error").await;
    assert_eq!(e["code"], "replaced", "{e}");
    assert_eq!(bob.closed().await, Some(4002));
    let about_bob = |m: &Value| {
        (m["type"] == "participant_left" && m["identity"] == "bob")
            || (m["type"] == "participant_joined" && m["participant"]["identity"] == "bob")
    };
    let first = ada.expect_where(about_bob).await;
    assert_eq!(
        left(&first),
        (Some("participant_left"), Some("bob"), Some("replaced")),
        "{first}"
    );
    let second = ada.expect_where(about_bob).await;
    assert_eq!(second["type"], "participant_joined", "{second}");
    assert_eq!(second["participant"]["tracks"], json!([]), "{second}");
    assert!(
        eventually(Duration::from_secs(15), || held(&node) == 1).await,
        "the replaced Bob's subscriber session ended (B asked n1 through A): n1 holds {}",
        held(&node)
    );

    //    The new Bob is auto-subscribed to Ada's tracks, on his own connection.
    let renegotiate = bob2.expect("renegotiate").await;
    assert_eq!(
        (renegotiate["audio"].as_u64(), renegotiate["video"].as_u64()),
        (Some(1), Some(1)),
        "{renegotiate}"
    );
    let mut bob2_sub = Offerer::new();
    let (sdp, _) = bob2_sub.offer(&recv_sections(1, 1));
    let answer = bob2
        .request(json!({"type": "subscriber_offer", "sdp": sdp}))
        .await;
    assert_eq!(answer["type"], "subscriber_answer", "{answer}");
    bob2_sub.accept(&answer);
    let mut subscribed = Vec::new();
    for _ in 0..2 {
        let s = bob2.expect("subscribed").await;
        subscribed.push(s["track"].as_str().expect("track").to_string());
    }
    subscribed.sort();
    let mut want = vec![audio.clone(), video.clone()];
    want.sort();
    assert_eq!(subscribed, want);

    // 4. Ada leaves through A: Bob, now on A too, sees her go and loses her tracks.
    let bye = ada.request(json!({"type": "leave"})).await;
    assert_eq!(bye["type"], "left", "{bye}");
    assert_eq!(ada.closed().await, Some(1000));
    let event = bob2.expect("participant_left").await;
    assert_eq!(
        left(&event),
        (Some("participant_left"), Some("ada"), Some("left")),
        "{event}"
    );
    let mut ended = Vec::new();
    for _ in 0..2 {
        let u = bob2.expect("unsubscribed").await;
        assert_eq!(u["reason"], "unpublished", "{u}");
        ended.push(u["track"].as_str().expect("track").to_string());
    }
    ended.sort();
    assert_eq!(ended, want);
    assert!(
        eventually(Duration::from_secs(15), || held(&node) == 1).await,
        "Ada's publisher session ended; Bob's subscriber remains: n1 holds {}",
        held(&node)
    );

    // 5. Carol joins through B and sees Bob (on A). A dies with Bob connected to it: nobody
    //    removes his roster entry, so Carol sees him leave once its lease ran out, and a
    //    later join through B no longer lists him.
    let (mut carol, joined) = join(&b, room, "carol").await;
    assert_eq!(
        joined["participants"]
            .as_array()
            .map(|p| p.iter().map(|p| p["identity"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("bob")]),
        "{joined}"
    );
    let event = bob2.expect("participant_joined").await;
    assert_eq!(event["participant"]["identity"], "carol", "{event}");
    assert!(
        a.signal_and_wait("KILL", Duration::from_secs(10)).is_some(),
        "A exits on SIGKILL"
    );
    let closed = bob2.expect_where(|m| m.get("closed").is_some()).await;
    assert_ne!(
        closed["closed"].as_u64(),
        Some(1000),
        "no normal close from a dead instance: {closed}"
    );
    let event = carol
        .expect_where_within(INSTANCE_DEATH_WAIT, |m| m["type"] == "participant_left")
        .await;
    // A roster entry that vanished is reported as `left` (the others cannot tell a lost
    // `Left` event from a lease that ran out).
    assert_eq!(
        left(&event),
        (Some("participant_left"), Some("bob"), Some("left")),
        "{event}"
    );
    let (_dave, joined) = join(&b, room, "dave").await;
    assert_eq!(
        joined["participants"]
            .as_array()
            .map(|p| p.iter().map(|p| p["identity"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("carol")]),
        "{joined}"
    );
    let event = carol.expect("participant_joined").await;
    assert_eq!(event["participant"]["identity"], "dave", "{event}");
    let seen = carol.drain().await;
    assert!(
        seen.iter()
            .all(|m| m["type"] != "participant_joined" || m["participant"]["identity"] != "bob"),
        "Bob does not come back: {seen:?}"
    );
    drop(node);
}

/// A node ends a session (here: its client never made contact) whose participant is on the
/// other instance than the one holding the node's link: the participant is told, as it would
/// be on the holding instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_on_the_other_instances_node_reaches_its_participant() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let (_a, b, node) = cluster(&redis, &dir, |config| {
        config.first_contact_timeout_secs = 1;
        config.connect_timeout_secs = 2;
    });
    let room = "ended";
    let (mut bob, _) = join(&b, room, "bob").await;
    let mut sub = Offerer::new();
    let (sdp, _) = sub.offer(&[(MediaKind::Audio, Direction::RecvOnly)]);
    let answer = bob
        .request(json!({"type": "subscriber_offer", "sdp": sdp}))
        .await;
    assert_eq!(answer["type"], "subscriber_answer", "{answer}");
    let ended = bob.expect("session_ended").await;
    assert_eq!(
        (ended["connection"].as_str(), ended["reason"].as_str()),
        (Some("subscriber"), Some("connect_timeout")),
        "{ended}"
    );
    assert!(
        eventually(Duration::from_secs(15), || held(&node) == 0).await,
        "n1 holds {}",
        held(&node)
    );
    // A new connection's offer makes a new session.
    let mut again = Offerer::new();
    let (sdp, _) = again.offer(&[(MediaKind::Audio, Direction::RecvOnly)]);
    let answer = bob
        .request(json!({"type": "subscriber_offer", "sdp": sdp}))
        .await;
    assert_eq!(answer["type"], "subscriber_answer", "{answer}");
}

/// A node's connection quality travels like its other events: B's participant publishes over
/// a real peer to n1, whose link A holds; A passes the quality through Redis to the
/// participant on B, whose roster entry and event bring it back to A's participant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participants_quality_crosses_instances() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let (a, b, _node) = cluster(&redis, &dir, patient);
    let room = "quality";
    let (mut ada, _) = join(&a, room, "ada").await;
    let (bob, _) = join(&b, room, "bob").await;
    ada.expect("participant_joined").await;
    let bob = RoomSignal::new(bob);
    let config = tools::PublisherConfig::new(&b.base_url, room, "unused");
    let publisher =
        tokio::task::block_in_place(|| tools::Publisher::connect_via(bob.clone(), "bob", &config))
            .expect("bob publishes");
    assert!(tokio::task::block_in_place(
        || publisher.wait_connected(CONNECT_TIMEOUT)
    ));
    let about_bob = |m: &Value| m["type"] == "quality" && m["participants"][0]["identity"] == "bob";
    let heard = ada.expect_where(about_bob).await;
    let own = bob.client().await.expect_where(about_bob).await;
    assert_eq!(heard["participants"], own["participants"]);
    assert!(
        matches!(
            heard["participants"][0]["quality"].as_str(),
            Some("excellent" | "good")
        ),
        "{heard}"
    );
    drop(publisher);
}
