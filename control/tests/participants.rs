//! A participant never receives its own media: with two publishers in a room, each one's
//! WHEP session shows the other, and a third party sees the newest.

mod support;

use std::time::Duration;

use support::{Server, wait_until};
use tools::publisher::{Publisher, PublisherConfig, VideoCodec, VideoConfig};
use tools::subscriber::{Subscriber, SubscriberConfig};
use tools::token::{Grants, dev_token};
use tools::{PayloadKind, Reception};

const CONNECT: Duration = Duration::from_secs(10);

fn publish(server: &Server, room: &str, identity: &str, codec: VideoCodec) -> Publisher {
    let token = dev_token(room, identity, Grants::PUBLISH).expect("token");
    let video = VideoConfig {
        codec,
        ..VideoConfig::default()
    };
    let config = PublisherConfig::new(&server.base_url, room, &token)
        .audio(true)
        .video(Some(video));
    let p = Publisher::connect(config).unwrap_or_else(|e| panic!("WHIP {identity}: {e}"));
    assert!(p.wait_connected(CONNECT), "{identity} publisher connects");
    p
}

fn watch(server: &Server, room: &str, identity: &str) -> Subscriber {
    let token = dev_token(room, identity, Grants::SUBSCRIBE).expect("token");
    let s = Subscriber::connect(SubscriberConfig::new(&server.base_url, room, &token))
        .unwrap_or_else(|e| panic!("WHEP {identity}: {e}"));
    assert!(s.wait_connected(CONNECT), "{identity} subscriber connects");
    s
}

/// Video codecs of the received packets, in order of arrival, repeats collapsed.
fn codecs_seen(r: &Reception) -> Vec<VideoCodec> {
    let mut seen: Vec<VideoCodec> = r
        .packets_of(PayloadKind::Video)
        .filter_map(|p| p.decoded().and_then(|d| d.framing()).map(|f| f.codec))
        .collect();
    seen.dedup();
    seen
}

#[test]
fn each_participant_sees_the_other_not_itself() {
    let server = Server::start();
    let room = "pair";
    // Alice publishes VP8, Bob (newer) publishes H264: the codec tells whose media arrived.
    let alice = publish(&server, room, "alice", VideoCodec::Vp8);
    let bob = publish(&server, room, "bob", VideoCodec::H264);
    let alice_watch = watch(&server, room, "alice");
    let bob_watch = watch(&server, room, "bob");
    let carol_watch = watch(&server, room, "carol");

    for (who, s) in [
        ("alice", &alice_watch),
        ("bob", &bob_watch),
        ("carol", &carol_watch),
    ] {
        assert!(
            wait_until(Duration::from_secs(5), || s.packets(PayloadKind::Video)
                >= 60
                && s.packets(PayloadKind::Audio) >= 20),
            "{who} receives audio and video (video {}, audio {})",
            s.packets(PayloadKind::Video),
            s.packets(PayloadKind::Audio)
        );
    }
    assert_eq!(
        codecs_seen(&alice_watch.reception()),
        vec![VideoCodec::H264],
        "alice sees only bob's (H264) video"
    );
    assert_eq!(
        codecs_seen(&bob_watch.reception()),
        vec![VideoCodec::Vp8],
        "bob sees only alice's (VP8) video, never his own"
    );
    assert_eq!(
        codecs_seen(&carol_watch.reception()),
        vec![VideoCodec::H264],
        "a third party sees the newest publisher (bob)"
    );
    for s in [alice_watch, bob_watch, carol_watch] {
        s.close().expect("DELETE subscriber");
    }
    alice.close().expect("DELETE alice");
    bob.close().expect("DELETE bob");
}

#[test]
fn a_viewer_may_name_whom_it_watches() {
    let server = Server::start();
    let room = "named";
    let alice = publish(&server, room, "alice", VideoCodec::Vp8);
    let bob = publish(&server, room, "bob", VideoCodec::H264);
    let connect = |identity: &str, whom: &str| {
        let token = dev_token(room, identity, Grants::SUBSCRIBE).expect("token");
        let config = SubscriberConfig::new(&server.base_url, room, &token).watching(whom);
        let s = Subscriber::connect(config).unwrap_or_else(|e| panic!("WHEP {identity}: {e}"));
        assert!(s.wait_connected(CONNECT), "{identity} subscriber connects");
        s
    };
    // Carol names alice, though bob published later; dave names someone who is not there.
    let carol = connect("carol", "alice");
    let dave = connect("dave", "nobody");
    let erin = watch(&server, room, "erin");
    assert!(
        wait_until(Duration::from_secs(5), || carol.packets(PayloadKind::Video)
            >= 60
            && erin.packets(PayloadKind::Video) >= 60),
        "carol and erin receive video"
    );
    assert_eq!(
        codecs_seen(&carol.reception()),
        vec![VideoCodec::Vp8],
        "carol sees alice"
    );
    assert_eq!(
        codecs_seen(&erin.reception()),
        vec![VideoCodec::H264],
        "erin sees the newest"
    );
    assert_eq!(
        dave.packets(PayloadKind::Video) + dave.packets(PayloadKind::Audio),
        0,
        "nobody named publishes nothing"
    );

    // WHIP has no one to watch: the parameter is refused.
    let token = dev_token(room, "frank", Grants::PUBLISH).expect("token");
    let offer = tools::load::negotiate::sample_offer(tools::whip::Endpoint::Whip).expect("offer");
    let response = server
        .client
        .request(&tools::whip::HttpRequest {
            method: tools::whip::Method::Post,
            target: &format!("/whip/{room}?participant=alice"),
            content_type: Some("application/sdp"),
            bearer: Some(&token),
            body: offer.as_bytes(),
        })
        .expect("request");
    assert_eq!(response.status, 400, "{}", response.body);
    for s in [carol, dave, erin] {
        s.close().expect("DELETE subscriber");
    }
    alice.close().expect("DELETE alice");
    bob.close().expect("DELETE bob");
}
