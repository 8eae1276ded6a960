//! Push-to-talk channels (docs/push-to-talk.md) through the real `control` binary: a room made
//! a channel through the admin API, floor control over the room protocol (grant, queue,
//! release, a moderator's preemption, a turn cut at `ptt.max_talk_secs`, refusals), and the
//! node forwarding only the holder's audio to real WHEP listeners.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::rtc::Client;
use support::{Server, wait_until};
use tools::PayloadKind::Audio;
use tools::Subscriber;
use tools::token::{Grants, dev_token};
use tools::whip::{HttpRequest, HttpResponse, Method};

const ROOM: &str = "channel";

fn settings(server: &Server, method: Method, token: &str, body: &str) -> HttpResponse {
    let target = format!("/api/rooms/{ROOM}/settings");
    server
        .client
        .request(&HttpRequest {
            method,
            target: &target,
            content_type: Some("application/json"),
            bearer: Some(token),
            body: body.as_bytes(),
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"))
}

fn grants(admin: bool, moderator: bool) -> Grants {
    Grants {
        admin,
        moderator,
        ..Grants::PUBLISH_SUBSCRIBE
    }
}

/// The next `floor` message whose holder is `holder` (`None`: free).
async fn floor_held_by(client: &mut Client, holder: Option<&str>) -> Value {
    let holder = holder.map_or(Value::Null, |h| json!(h));
    client
        .expect_where(|m| m["type"] == "floor" && m["holder"] == holder)
        .await
}

/// A WHEP listener that follows `identity`'s audio only.
fn listener_of(server: &Server, identity: &str) -> Subscriber {
    server.subscribe_with(ROOM, |c| {
        let mut c = c.watching(identity);
        c.video = false;
        c
    })
}

/// `talking` is heard (at least 25 more packets, half a second of audio) while `silent`
/// gains at most 2 (packets the node had sent before the floor changed).
fn assert_heard_alone(talking: (&str, &Subscriber), silent: (&str, &Subscriber)) {
    let silent_before = silent.1.packets(Audio);
    let target = talking.1.packets(Audio) + 25;
    assert!(
        wait_until(Duration::from_secs(10), || talking.1.packets(Audio)
            >= target),
        "{}'s audio is heard: {} packets, wanted {target}",
        talking.0,
        talking.1.packets(Audio)
    );
    let leaked = silent.1.packets(Audio) - silent_before;
    assert!(
        leaked <= 2,
        "{} does not hold the floor, yet {leaked} of its packets reached a listener",
        silent.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_grants_queues_preempts_and_forwards_only_the_holder() {
    let server = Server::start_with(2, &[("SFU__PTT__MAX_TALK_SECS", "10")], &[]);

    // Only the room's admin makes it a channel, with settings that parse.
    let user = dev_token(ROOM, "ada", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let admin = dev_token(ROOM, "boss", grants(true, false)).expect("token");
    let elsewhere = dev_token("other", "boss", grants(true, false)).expect("token");
    assert_eq!(
        settings(&server, Method::Put, &user, r#"{"ptt":true}"#).status,
        403
    );
    assert_eq!(
        settings(&server, Method::Put, &elsewhere, r#"{"ptt":true}"#).status,
        403
    );
    let bad = settings(&server, Method::Put, &admin, r#"{"ptt":"yes"}"#);
    assert_eq!(bad.status, 400, "{}", bad.body);
    let put = settings(&server, Method::Put, &admin, r#"{"ptt":true}"#);
    assert_eq!(put.status, 200, "{}", put.body);
    let got = settings(&server, Method::Get, &admin, "");
    assert_eq!(
        serde_json::from_str::<Value>(&got.body).expect("JSON"),
        json!({"ptt": true})
    );

    let (mut ada, joined) = Client::join(&server, ROOM, "ada").await;
    assert_eq!(joined["settings"]["ptt"], true);
    floor_held_by(&mut ada, None).await;
    let (mut bob, _) = Client::join(&server, ROOM, "bob").await;
    floor_held_by(&mut bob, None).await;
    let (mut lis, _) = Client::join_with(&server, ROOM, "lis", Grants::SUBSCRIBE).await;
    let (mut boss, _) = Client::join_with(&server, ROOM, "boss", grants(false, true)).await;

    // A listener-only token may not talk.
    let denied = lis.request(json!({"type": "floor_request"})).await;
    assert_eq!(denied["type"], "floor_denied", "{denied}");
    assert_eq!(denied["reason"], "no_publish_grant");

    // Ada's and Bob's microphones (WHIP, the same identities), and one listener for each.
    let ada_mic = server.publish_as(ROOM, "ada", true, None);
    let bob_mic = server.publish_as(ROOM, "bob", true, None);
    let hear_ada = listener_of(&server, "ada");
    let hear_bob = listener_of(&server, "bob");
    assert!(ada_mic.wait_connected(Duration::ZERO) && bob_mic.wait_connected(Duration::ZERO));
    // Nobody holds the floor: nothing is heard while both microphones send.
    let (a0, b0) = (hear_ada.packets(Audio), hear_bob.packets(Audio));
    let sent = ada_mic.stats().audio_packets + 50;
    assert!(
        wait_until(Duration::from_secs(10), || ada_mic.stats().audio_packets
            >= sent),
        "Ada's microphone sends"
    );
    assert_eq!(
        (hear_ada.packets(Audio) - a0, hear_bob.packets(Audio) - b0),
        (0, 0),
        "a free floor lets no audio through"
    );

    // Ada asks first and talks; Bob asks and waits.
    ada.send(json!({"type": "floor_request"})).await;
    let granted = ada.expect("floor_granted").await;
    let max_talk = granted["max_talk_ms"].as_u64().expect("max_talk_ms");
    assert!((9_000..=10_000).contains(&max_talk), "{granted}");
    let floor = floor_held_by(&mut lis, Some("ada")).await;
    assert_eq!(floor["ptt"], true);
    assert_heard_alone(("ada", &hear_ada), ("bob", &hear_bob));
    let queued = bob.request(json!({"type": "floor_request"})).await;
    assert_eq!(
        queued["type"], "floor_queued",
        "the answer carries the req: {queued}"
    );
    assert_eq!(queued["position"], 1);
    let floor = lis
        .expect_where(|m| m["type"] == "floor" && m["queue"] == json!(["bob"]))
        .await;
    assert_eq!(floor["holder"], "ada");

    // Ada lets go: the floor passes to Bob.
    ada.send(json!({"type": "floor_release"})).await;
    bob.expect("floor_granted").await;
    floor_held_by(&mut lis, Some("bob")).await;
    assert_heard_alone(("bob", &hear_bob), ("ada", &hear_ada));

    // The moderator takes the floor at once; Bob is revoked and first in line.
    boss.send(json!({"type": "floor_request"})).await;
    boss.expect("floor_granted").await;
    assert_eq!(bob.expect("floor_revoked").await["reason"], "preempted");
    let floor = floor_held_by(&mut lis, Some("boss")).await;
    assert_eq!(floor["queue"], json!(["bob"]));
    // Nobody's microphone is the moderator's: the room is silent.
    let (a1, b1) = (hear_ada.packets(Audio), hear_bob.packets(Audio));
    let sent = bob_mic.stats().audio_packets + 50;
    assert!(wait_until(Duration::from_secs(10), || bob_mic
        .stats()
        .audio_packets
        >= sent));
    assert!(hear_ada.packets(Audio) - a1 <= 2 && hear_bob.packets(Audio) - b1 <= 2);

    // The moderator leaves: Bob gets the floor back, and loses it at max_talk_secs.
    boss.request(json!({"type": "leave"})).await;
    bob.expect("floor_granted").await;
    floor_held_by(&mut lis, Some("bob")).await;
    assert_heard_alone(("bob", &hear_bob), ("ada", &hear_ada));
    let revoked = bob
        .expect_where_within(Duration::from_secs(30), |m| m["type"] == "floor_revoked")
        .await;
    assert_eq!(revoked["reason"], "time_up");
    floor_held_by(&mut lis, None).await;

    // A meeting room has no floor.
    let (mut other, _) = Client::join(&server, "meeting", "ada").await;
    let denied = other.request(json!({"type": "floor_request"})).await;
    assert_eq!(denied["type"], "floor_denied");
    assert_eq!(denied["reason"], "not_push_to_talk");

    let metrics = server.metrics();
    assert!(metrics.sum("sfu_floor_changes_total") >= 5.0);
    assert!(metrics.sum("sfu_floor_dropped_total") > 0.0);

    // Back to a meeting: the floor opens and everyone is heard.
    let reset = settings(&server, Method::Delete, &admin, "");
    assert_eq!(reset.status, 200);
    let open = lis
        .expect_where_within(Duration::from_secs(15), |m| {
            m["type"] == "floor" && m["ptt"] == false
        })
        .await;
    assert_eq!(open["holder"], Value::Null);
    let (a2, b2) = (hear_ada.packets(Audio) + 25, hear_bob.packets(Audio) + 25);
    assert!(
        wait_until(Duration::from_secs(10), || hear_ada.packets(Audio) >= a2
            && hear_bob.packets(Audio) >= b2),
        "an open room forwards everyone's audio"
    );
}
