//! The WebSocket room protocol (docs/signaling.md) against the real `control` binary: a call
//! message by message, every error and close code, a socket that drops and resumes, and a
//! WHIP publisher listed in its room.
//! Offers come from str0m peers, so the node answers real SDP (media itself is the browser
//! and load tests' part).

mod support;

use futures_util::SinkExt;
use serde_json::{Value, json};
use str0m::media::{Direction, MediaKind};
use support::data::{DataPeer, Received};
use support::rtc::{Client, Offerer, RoomSignal, ids, publish_offer, recv_sections};
use support::{CONNECT_TIMEOUT, Server};
use tokio_tungstenite::tungstenite::Message;
use tools::token::{Grants, dev_token};

/// The test peers make offers but never connect: without these, the node would end their
/// sessions after `node.first_contact_timeout_secs` (5 s), and a test slowed down by a busy
/// machine would lose its publishers' tracks halfway.
const PATIENT_NODE: [(&str, &str); 2] = [
    ("SFU__NODE__FIRST_CONTACT_TIMEOUT_SECS", "600"),
    ("SFU__NODE__CONNECT_TIMEOUT_SECS", "600"),
];

fn server(workers: usize, env: &[(&str, &str)]) -> Server {
    let mut all = PATIENT_NODE.to_vec();
    all.extend_from_slice(env);
    Server::start_with(workers, &all, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_message_by_message() {
    let server = server(2, &[]);
    let room = "call";
    let (mut ada, joined) = Client::join(&server, room, "ada").await;
    assert_eq!(joined["v"], 1);
    assert_eq!(joined["room"], room);
    assert_eq!(joined["me"]["identity"], "ada");
    assert_eq!(joined["me"]["name"], "ADA");
    assert_eq!(joined["participants"], json!([]));
    assert_eq!(joined["resumed"], false);
    assert_eq!(joined["resume"]["token"].as_str().map(str::len), Some(32));

    let (mut bob, joined) = Client::join(&server, room, "bob").await;
    assert_eq!(joined["participants"][0]["identity"], "ada");
    let event = ada.expect("participant_joined").await;
    assert_eq!(event["participant"]["identity"], "bob");

    // Ada publishes a microphone and a camera.
    let (mut ada_pub, answer, mids) = ada.publish_mic_and_camera().await;
    let tracks = answer["tracks"].as_array().expect("tracks").clone();
    assert_eq!(tracks.len(), 2);
    assert_eq!(tracks[0]["kind"], "audio");
    assert_eq!(tracks[0]["source"], "microphone");
    assert_eq!(tracks[0]["mid"], mids[0].as_str());
    assert_eq!(tracks[1]["kind"], "video");
    assert_eq!(tracks[1]["mid"], mids[1].as_str());
    let (audio, video) = (
        ids(&answer["tracks"])[0].clone(),
        ids(&answer["tracks"])[1].clone(),
    );

    // Bob learns of both and is asked for a receiving section of each kind.
    for _ in 0..2 {
        let published = bob.expect("track_published").await;
        assert_eq!(published["track"]["identity"], "ada");
        assert!(
            published["track"].get("mid").is_none(),
            "others do not see my mids"
        );
    }
    let renegotiate = bob.expect("renegotiate").await;
    assert_eq!(
        (renegotiate["audio"].as_u64(), renegotiate["video"].as_u64()),
        (Some(1), Some(1))
    );
    let mut bob_sub = Offerer::new();
    let (sdp, sub_mids) = bob_sub.offer(&recv_sections(1, 1));
    let answer = bob
        .request(json!({"type": "subscriber_offer", "sdp": sdp}))
        .await;
    assert_eq!(answer["type"], "subscriber_answer", "{answer}");
    bob_sub.accept(&answer);
    assert_eq!(answer["slots"].as_array().map(Vec::len), Some(2));
    let carried = bob.subscribed(2).await;
    let mut want = vec![
        (audio.clone(), sub_mids[0].clone()),
        (video.clone(), sub_mids[1].clone()),
    ];
    want.sort();
    assert_eq!(carried, want, "each track on the section of its kind");

    // A small tile: lowest layer; then out of view: paused.
    let set = bob
        .request(json!({"type": "set_subscription", "track": video, "max_layer": 0}))
        .await;
    assert_eq!(
        (
            set["type"].as_str(),
            set["max_layer"].as_u64(),
            set["paused"].as_bool()
        ),
        (Some("subscription"), Some(0), Some(false))
    );
    let set = bob
        .request(json!({"type": "set_subscription", "track": video, "paused": true}))
        .await;
    assert_eq!(
        (set["max_layer"].as_u64(), set["paused"].as_bool()),
        (Some(0), Some(true))
    );

    // Mute: everyone hears of it, the muter in answer to its request.
    let muted = ada
        .request(json!({"type": "mute", "track": audio, "muted": true}))
        .await;
    assert_eq!(
        (muted["type"].as_str(), muted["muted"].as_bool()),
        (Some("track_muted"), Some(true))
    );
    let muted = bob.expect("track_muted").await;
    assert_eq!(
        (muted["track"].as_str(), muted["identity"].as_str()),
        (Some(audio.as_str()), Some("ada"))
    );

    // Bob stops receiving the audio: its section is free again.
    bob.send(json!({"type": "unsubscribe", "track": audio}))
        .await;
    let gone = bob.expect("unsubscribed").await;
    assert_eq!(
        (gone["track"].as_str(), gone["reason"].as_str()),
        (Some(audio.as_str()), Some("requested"))
    );

    // Ada adds a screen share by renegotiating her publisher connection.
    let (sdp, more) = ada_pub.offer(&[(MediaKind::Video, Direction::SendOnly)]);
    let answer = ada
        .request(json!({"type": "publish", "sdp": sdp, "tracks": [{"mid": more[0], "source": "screen"}]}))
        .await;
    assert_eq!(answer["type"], "publish_answer", "{answer}");
    ada_pub.accept(&answer);
    let all = ids(&answer["tracks"]);
    assert_eq!(all.len(), 3);
    assert_eq!(
        &all[..2],
        &[audio.clone(), video.clone()],
        "earlier tracks keep their ids"
    );
    let screen = all[2].clone();
    assert_eq!(answer["tracks"][2]["source"], "screen");
    assert_eq!(
        answer["tracks"][0]["muted"], true,
        "a renegotiation keeps the mute state"
    );
    let published = bob.expect("track_published").await;
    assert_eq!(published["track"]["id"], screen.as_str());
    let renegotiate = bob.expect("renegotiate").await;
    assert_eq!(
        (renegotiate["audio"].as_u64(), renegotiate["video"].as_u64()),
        (Some(1), Some(2))
    );
    let (sdp, extra) = bob_sub.offer(&recv_sections(0, 1));
    let answer = bob
        .request(json!({"type": "subscriber_offer", "sdp": sdp}))
        .await;
    assert_eq!(
        answer["slots"].as_array().map(Vec::len),
        Some(3),
        "{answer}"
    );
    bob_sub.accept(&answer);
    let s = bob.expect("subscribed").await;
    assert_eq!(
        (s["track"].as_str(), s["mid"].as_str()),
        (Some(screen.as_str()), Some(extra[0].as_str()))
    );

    // Ada leaves: she is told, her socket closes normally, Bob sees her go and loses her
    // tracks.
    let left = ada.request(json!({"type": "leave"})).await;
    assert_eq!(left["type"], "left");
    assert_eq!(ada.closed().await, Some(1000));
    let event = bob.expect("participant_left").await;
    assert_eq!(
        (event["identity"].as_str(), event["reason"].as_str()),
        (Some("ada"), Some("left"))
    );
    let mut ended = Vec::new();
    for _ in 0..2 {
        let u = bob.expect("unsubscribed").await;
        assert_eq!(u["reason"], "unpublished");
        ended.push(u["track"].as_str().expect("track").to_string());
    }
    ended.sort();
    let mut want = vec![video.clone(), screen.clone()];
    want.sort();
    assert_eq!(ended, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_its_code() {
    let server = server(
        1,
        &[
            ("SFU__RTC__MAX_PARTICIPANTS", "2"),
            ("SFU__RTC__MAX_TRACKS_PER_PARTICIPANT", "1"),
            ("SFU__RTC__MAX_MESSAGE_BYTES", "8192"),
        ],
    );
    let room = "errors";

    // Before join.
    let mut c = Client::connect(&server, room).await;
    let e = c.request(json!({"type": "ping"})).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("not_joined"))
    );
    c.send(json!("just a string")).await;
    assert_eq!(c.expect("error").await["code"], "bad_message");
    c.ws.send(Message::text("{not json")).await.expect("send");
    assert_eq!(c.expect("error").await["code"], "bad_message");
    let e = c.request(json!({"type": "fly"})).await;
    assert_eq!(
        e["code"], "bad_message",
        "an unknown type keeps its req: {e}"
    );
    c.ws.send(Message::binary(vec![1, 2, 3]))
        .await
        .expect("send");
    assert_eq!(c.expect("error").await["code"], "bad_message");

    // A join that cannot be: bad version, bad token, token of another room.
    let e = c.request(json!({"type": "join", "v": 99})).await;
    assert_eq!(e["code"], "unsupported_version");
    assert_eq!(c.closed().await, Some(4000));
    let mut c = Client::connect(&server, room).await;
    let e = c
        .request(json!({"type": "join", "v": 1, "token": "nonsense"}))
        .await;
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(c.closed().await, Some(4001));
    let mut c = Client::connect(&server, room).await;
    let other = dev_token("elsewhere", "eve", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let e = c
        .request(json!({"type": "join", "v": 1, "token": other}))
        .await;
    assert_eq!(e["code"], "forbidden");
    assert_eq!(c.closed().await, Some(4003));
    let mut c = Client::connect(&server, room).await;
    let e = c
        .request(json!({"type": "join", "v": 1, "resume": "0123"}))
        .await;
    assert_eq!(e["code"], "unauthorized", "a resume needs a token too");

    // Joined: errors on what it asks for.
    let (mut ada, _) = Client::join(&server, room, "ada").await;
    let e = ada.request(json!({"type": "join", "v": 1})).await;
    assert_eq!(e["code"], "already_joined");
    let e = ada
        .request(json!({"type": "subscribe", "track": "nope-0"}))
        .await;
    assert_eq!(e["code"], "unknown_track");
    let e = ada
        .request(json!({"type": "mute", "track": "nope-0", "muted": true}))
        .await;
    assert_eq!(e["code"], "unknown_track");
    let e = ada
        .request(json!({"type": "set_subscription", "track": "nope-0", "paused": true}))
        .await;
    assert_eq!(e["code"], "unknown_track");
    let e = ada
        .request(json!({"type": "publish", "sdp": "v=0\r\nthis is not SDP\r\n"}))
        .await;
    assert_eq!(e["code"], "bad_offer", "{e}");
    let mut p = Offerer::new();
    let (sdp, _) = publish_offer(&mut p);
    let e = ada.request(json!({"type": "publish", "sdp": sdp})).await;
    assert_eq!(
        e["code"], "too_many_tracks",
        "two sections, the limit is one: {e}"
    );
    let e = ada
        .request(json!({"type": "subscriber_offer", "sdp": "garbage"}))
        .await;
    assert_eq!(e["code"], "bad_offer", "{e}");

    // A token without the publish grant may join, not publish.
    let mut viewer = Client::connect(&server, room).await;
    let token = dev_token(room, "viewer", Grants::SUBSCRIBE).expect("token");
    assert_eq!(
        viewer
            .request(json!({"type": "join", "v": 1, "token": token}))
            .await["type"],
        "joined"
    );
    let mut p = Offerer::new();
    let (sdp, _) = p.offer(&[(MediaKind::Audio, Direction::SendOnly)]);
    let e = viewer.request(json!({"type": "publish", "sdp": sdp})).await;
    assert_eq!(e["code"], "forbidden");

    // The room holds two: a third identity is refused, a rejoin of one present is not.
    let mut third = Client::connect(&server, room).await;
    let token = dev_token(room, "third", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let e = third
        .request(json!({"type": "join", "v": 1, "token": token}))
        .await;
    assert_eq!(e["code"], "room_full");
    assert_eq!(third.closed().await, Some(4003));

    // The same identity joining again replaces the first socket's participant.
    let (_ada2, _) = Client::join(&server, room, "ada").await;
    let e = ada.expect("error").await;
    assert_eq!(e["code"], "replaced");
    assert_eq!(ada.closed().await, Some(4002));

    // Too large: the socket is closed with 1009.
    let big = json!({"type": "publish", "sdp": "v=0\r\n".repeat(3000)});
    viewer.send(big).await;
    assert_eq!(viewer.closed().await, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_repeated_errors_are_cut_off() {
    let server = server(
        1,
        &[
            ("SFU__RTC__MESSAGES_PER_SEC", "1"),
            ("SFU__RTC__MESSAGE_BURST", "5"),
            ("SFU__RTC__MAX_ERRORS", "3"),
        ],
    );
    let (mut c, _) = Client::join(&server, "flood", "ada").await;
    // The join took one token: four more pass, then the bucket is empty.
    for _ in 0..10 {
        c.send(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    loop {
        let m = c.next().await;
        match m["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(m["code"], "rate_limited");
                limited += 1;
            }
            _ => {
                // The third error closes the socket with 4008.
                assert_eq!(m["closed"], 4008, "{m}");
                break;
            }
        }
    }
    assert!(pongs <= 5, "at most the burst passes: {pongs}");
    assert_eq!(limited, 3, "the third error is the last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_within_the_grace_period_and_leaves_after_it() {
    let server = server(1, &[("SFU__RTC__RESUME_SECS", "3")]);
    let room = "resume";
    let (mut ada, joined) = Client::join(&server, room, "ada").await;
    let resume = joined["resume"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let mut p = Offerer::new();
    let (sdp, mids) = p.offer(&[(MediaKind::Audio, Direction::SendOnly)]);
    let answer = ada
        .request(json!({"type": "publish", "sdp": sdp, "tracks": [{"mid": mids[0]}]}))
        .await;
    let track = ids(&answer["tracks"])[0].clone();
    let (mut bob, _) = Client::join(&server, room, "bob").await;

    // Ada's socket drops (no close handshake) and a new one resumes her.
    drop(ada);
    let mut ada = Client::connect(&server, room).await;
    let token = dev_token(room, "ada", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let joined = ada
        .request(json!({"type": "join", "v": 1, "token": token, "resume": resume}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["resumed"], true);
    assert!(
        ada.backlog.is_empty(),
        "nothing comes before joined: {:?}",
        ada.backlog
    );
    assert_eq!(
        ids(&joined["me"]["tracks"]),
        vec![track.clone()],
        "her track is still published"
    );
    assert_eq!(joined["me"]["tracks"][0]["mid"], mids[0].as_str());
    assert_eq!(joined["participants"][0]["identity"], "bob");
    let fresh = joined["resume"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_ne!(fresh, resume, "each joined carries a fresh token");
    // Bob saw nothing of it: no one left.
    let seen = bob.drain().await;
    assert!(
        seen.iter().all(|m| m["type"] != "participant_left"),
        "bob saw ada leave during a resume: {seen:?}"
    );

    // A resume token is single-use.
    let mut again = Client::connect(&server, room).await;
    let token = dev_token(room, "ada", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let e = again
        .request(json!({"type": "join", "v": 1, "token": token, "resume": resume}))
        .await;
    assert_eq!(e["code"], "resume_failed");
    // Another identity cannot take Ada over with her token.
    let token = dev_token(room, "mallory", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let e = again
        .request(json!({"type": "join", "v": 1, "token": token, "resume": fresh}))
        .await;
    assert_eq!(e["code"], "resume_failed");

    // Dropped again and not resumed: after rtc.resume_secs she leaves.
    drop(ada);
    let event = bob.expect("participant_left").await;
    assert_eq!(
        (event["identity"].as_str(), event["reason"].as_str()),
        (Some("ada"), Some("timeout"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_is_a_participant_of_its_room() {
    let server = server(1, &[]);
    let room = "whip-room";
    let (mut ada, _) = Client::join(&server, room, "ada").await;
    // The WHIP peer runs on threads of its own; connecting blocks.
    let video = Some(tools::publisher::VideoConfig::default());
    let publisher = tokio::task::block_in_place(|| server.publish(room, true, video));

    let event = ada.expect("participant_joined").await;
    assert_eq!(event["participant"]["identity"], "publisher");
    let kinds: Vec<&str> = event["participant"]["tracks"]
        .as_array()
        .expect("tracks")
        .iter()
        .map(|t| t["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["audio", "video"]);
    // Ada is subscribed to it like to anyone.
    let renegotiate = ada.expect("renegotiate").await;
    assert_eq!(
        (renegotiate["audio"].as_u64(), renegotiate["video"].as_u64()),
        (Some(1), Some(1))
    );
    // A later joiner finds it in the room.
    let (_bob, joined) = Client::join(&server, room, "bob").await;
    let listed: Vec<&str> = joined["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| p["identity"].as_str().expect("identity"))
        .collect();
    assert_eq!(listed, ["ada", "publisher"]);
    assert_eq!(ids(&joined["participants"][1]["tracks"]).len(), 2);
    // Its connection's quality is its quality, as for anyone.
    let quality = ada
        .expect_where(|m| m["type"] == "quality" && m["participants"][0]["identity"] == "publisher")
        .await;
    assert!(
        matches!(
            quality["participants"][0]["quality"].as_str(),
            Some("excellent" | "good")
        ),
        "{quality}"
    );

    // Its DELETE ends the session: it leaves the room.
    tokio::task::block_in_place(|| publisher.close()).expect("DELETE");
    let left = ada.expect("participant_left").await;
    assert_eq!(
        (left["identity"].as_str(), left["reason"].as_str()),
        (Some("publisher"), Some("left"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_participant_s_quality_reaches_the_room() {
    let server = server(1, &[]);
    let room = "quality";
    let (mut ada, _) = Client::join(&server, room, "ada").await;
    let (carol, _) = Client::join(&server, room, "carol").await;
    ada.expect("participant_joined").await;
    let carol = RoomSignal::new(carol);
    // Carol's publisher connection is a real peer: ICE, DTLS and media over loopback. It runs
    // on threads of its own; connecting blocks.
    let config = tools::PublisherConfig::new(&server.base_url, room, "unused");
    let publisher = tokio::task::block_in_place(|| {
        tools::Publisher::connect_via(carol.clone(), "carol", &config)
    })
    .expect("carol publishes");
    assert!(tokio::task::block_in_place(
        || publisher.wait_connected(CONNECT_TIMEOUT)
    ));

    // Her node judges the connection within seconds of its first reports: the room hears it.
    let about_carol = |m: &Value| {
        m["type"] == "quality"
            && m["participants"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["identity"] == "carol"))
    };
    let heard = ada.expect_where(about_carol).await;
    assert_eq!(heard["participants"].as_array().map(Vec::len), Some(1));
    let quality = heard["participants"][0]["quality"].clone();
    assert!(
        quality == "excellent" || quality == "good",
        "a clean loopback: {heard}"
    );
    // Carol learns her own.
    let own = carol.client().await.expect_where(about_carol).await;
    assert_eq!(own["participants"], heard["participants"]);

    // A later joiner finds it in `joined`; Ada, with no connection, has none yet.
    let (_bob, joined) = Client::join(&server, room, "bob").await;
    let listed = |identity: &str| {
        joined["participants"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["identity"] == identity))
            .cloned()
            .unwrap_or_else(|| panic!("{identity} in {joined}"))
    };
    assert_eq!(listed("carol")["quality"], quality);
    assert!(listed("ada").get("quality").is_none(), "{joined}");
    drop(publisher);
}

/// Data messages (docs/signaling.md, "Data messages") between three participants' data
/// channels, through the node and control: to the room and to one participant, on either
/// channel kind, `from` stamped by the server and no copy to the sender; every refusal is an
/// `error` (without `req`) on the sender's socket, and a refused message reaches nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_messages_reach_the_room_or_one_participant_and_refusals_are_errors() {
    let server = server(
        1,
        &[
            ("SFU__RTC__DATA_MAX_BYTES", "100"),
            ("SFU__RTC__DATA_MESSAGES_PER_SEC", "1"),
            ("SFU__RTC__DATA_BURST", "12"),
        ],
    );
    let room = "data";
    let (mut ada, _) = Client::join(&server, room, "ada").await;
    let (mut bob, _) = Client::join(&server, room, "bob").await;
    let (mut cyd, _) = Client::join(&server, room, "cyd").await;
    let ada_dc = DataPeer::connect(&mut ada).await;
    let bob_dc = DataPeer::connect(&mut bob).await;
    let cyd_dc = DataPeer::connect(&mut cyd).await;
    let got = |reliable, text: &str| Received {
        reliable,
        text: text.to_string(),
    };

    // To the room on the reliable channel, then to bob alone on the unreliable one.
    ada_dc.send(true, r#"{"data":{"chat":"hello"}}"#);
    ada_dc.send(false, r#"{"to":"bob","data":"psst"}"#);
    let mut bob_got = bob_dc.wait_received(2).await;
    bob_got.sort_by(|a, b| a.text.cmp(&b.text));
    assert_eq!(
        bob_got,
        vec![
            got(true, r#"{"from":"ada","data":{"chat":"hello"}}"#),
            got(false, r#"{"from":"ada","to":"bob","data":"psst"}"#),
        ]
    );

    // Refused, each with its code on ada's socket; none reaches anyone.
    let refused = [
        (r#"{"to":"zed","data":1}"#, "unknown_participant"),
        ("not json", "bad_message"),
        (r#"{"data":1,"colour":"red"}"#, "bad_message"),
        // A client cannot name the sender.
        (r#"{"from":"bob","data":"it was me"}"#, "bad_message"),
        (&format!(r#"{{"data":"{}"}}"#, "x".repeat(100)), "too_large"),
    ];
    for (text, code) in refused {
        ada_dc.send(true, text);
        let e = ada.expect("error").await;
        assert_eq!(e["code"], code, "{text}: {e}");
        assert!(e.get("req").is_none(), "{e}");
    }

    // Bob answers the room: cyd's messages are ada's first and bob's, nothing refused and
    // not the one for bob alone; ada gets bob's and never her own.
    bob_dc.send(true, r#"{"data":"end"}"#);
    assert_eq!(
        cyd_dc.wait_received(2).await,
        vec![
            got(true, r#"{"from":"ada","data":{"chat":"hello"}}"#),
            got(true, r#"{"from":"bob","data":"end"}"#),
        ]
    );
    assert_eq!(
        ada_dc.wait_received(1).await,
        vec![got(true, r#"{"from":"bob","data":"end"}"#)]
    );

    // Over the rate (12 at once, then one a second): the excess is refused.
    for i in 0..12 {
        ada_dc.send(true, format!(r#"{{"data":{i}}}"#));
    }
    let e = ada.expect("error").await;
    assert_eq!(e["code"], "rate_limited", "{e}");
}
