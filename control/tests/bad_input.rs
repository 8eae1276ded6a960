//! Hostile and malformed input: the HTTP error contract of docs/http-api.md, and garbage UDP
//! at the media ports while a real session is live.

mod support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand::rngs::StdRng;
use support::{Server, candidate_ports, expect_media};
use tools::PayloadKind::{Audio, Video};
use tools::noise::{self, NoiseKind};
use tools::token::{self, DEV_API_KEY, DEV_API_SECRET, Grants, dev_token};
use tools::whip::{Endpoint, HttpRequest, HttpResponse, Method};
use tools::{VideoConfig, sample_offer};

fn post(
    server: &Server,
    target: &str,
    content_type: Option<&str>,
    bearer: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    server
        .client
        .request(&HttpRequest {
            method: Method::Post,
            target,
            content_type,
            bearer,
            body,
        })
        .unwrap_or_else(|e| panic!("POST {target}: {e}"))
}

fn offer(endpoint: Endpoint) -> String {
    sample_offer(endpoint).expect("sample offer")
}

fn publish_token(room: &str) -> String {
    dev_token(room, "alice", Grants::PUBLISH).expect("token")
}

fn assert_status(r: &HttpResponse, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: got {r:?}");
    if status >= 400 {
        assert!(
            !r.body.trim().is_empty(),
            "{what}: error responses carry a one-line message: {r:?}"
        );
    }
}

#[test]
fn malformed_sdp_is_400_with_a_message() {
    let server = Server::start();
    let token = publish_token("r");
    for (what, body) in [
        ("not SDP at all", "hello, this is not SDP".to_string()),
        (
            "SDP without m-lines",
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n".into(),
        ),
        ("truncated offer", offer(Endpoint::Whip)[..200].to_string()),
    ] {
        let r = post(
            &server,
            "/whip/r",
            Some("application/sdp"),
            Some(&token),
            body.as_bytes(),
        );
        assert_status(&r, 400, what);
    }
    let sub = dev_token("r", "bob", Grants::SUBSCRIBE).expect("token");
    let r = post(
        &server,
        "/whep/r",
        Some("application/sdp"),
        Some(&sub),
        b"garbage",
    );
    assert_status(&r, 400, "WHEP with garbage");
}

#[test]
fn body_over_64_kib_is_413() {
    let server = Server::start();
    let mut body = offer(Endpoint::Whip).into_bytes();
    while body.len() <= 64 * 1024 {
        body.extend_from_slice(b"a=x-padding:0123456789abcdef0123456789abcdef\r\n");
    }
    let r = post(
        &server,
        "/whip/r",
        Some("application/sdp"),
        Some(&publish_token("r")),
        &body,
    );
    assert_status(&r, 413, "oversized offer");
}

#[test]
fn wrong_content_type_is_415() {
    let server = Server::start();
    let body = offer(Endpoint::Whip);
    for ct in [Some("text/plain"), Some("application/json"), None] {
        let r = post(
            &server,
            "/whip/r",
            ct,
            Some(&publish_token("r")),
            body.as_bytes(),
        );
        assert_status(&r, 415, &format!("content type {ct:?}"));
    }
}

#[test]
fn missing_bad_or_expired_token_is_401() {
    let server = Server::start();
    let body = offer(Endpoint::Whip);
    let r = post(
        &server,
        "/whip/r",
        Some("application/sdp"),
        None,
        body.as_bytes(),
    );
    assert_status(&r, 401, "no token");

    let r = post(
        &server,
        "/whip/r",
        Some("application/sdp"),
        Some("not.a.jwt"),
        body.as_bytes(),
    );
    assert_status(&r, 401, "garbage token");

    let now = SystemTime::now();
    let claims = token::claims_at(
        DEV_API_KEY,
        "r",
        "alice",
        Grants::PUBLISH,
        now,
        Duration::from_secs(3600),
    );
    let forged = token::mint(&claims, DEV_API_KEY, "not-the-secret").expect("sign");
    let r = post(
        &server,
        "/whip/r",
        Some("application/sdp"),
        Some(&forged),
        body.as_bytes(),
    );
    assert_status(&r, 401, "bad signature");

    let issued = now - Duration::from_secs(7200);
    let expired = token::claims_at(
        DEV_API_KEY,
        "r",
        "alice",
        Grants::PUBLISH,
        issued,
        Duration::from_secs(3600),
    );
    let expired = token::mint(&expired, DEV_API_KEY, DEV_API_SECRET).expect("sign");
    let r = post(
        &server,
        "/whip/r",
        Some("application/sdp"),
        Some(&expired),
        body.as_bytes(),
    );
    assert_status(&r, 401, "expired token");
}

#[test]
fn wrong_room_or_missing_grant_is_403() {
    let server = Server::start();
    let whip = offer(Endpoint::Whip);
    let whep = offer(Endpoint::Whep);

    let other_room = publish_token("elsewhere");
    let r = post(
        &server,
        "/whip/r",
        Some("application/sdp"),
        Some(&other_room),
        whip.as_bytes(),
    );
    assert_status(&r, 403, "token for another room");

    let subscribe_only = dev_token("r", "bob", Grants::SUBSCRIBE).expect("token");
    let r = post(
        &server,
        "/whip/r",
        Some("application/sdp"),
        Some(&subscribe_only),
        whip.as_bytes(),
    );
    assert_status(&r, 403, "subscribe-only token on WHIP");

    let publish_only = publish_token("r");
    let r = post(
        &server,
        "/whep/r",
        Some("application/sdp"),
        Some(&publish_only),
        whep.as_bytes(),
    );
    assert_status(&r, 403, "publish-only token on WHEP");
}

#[test]
fn delete_or_patch_of_unknown_session_is_404_and_patch_is_405() {
    let server = Server::start();
    let token = dev_token("r", "alice", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let request = |method, target: &str| {
        server
            .client
            .request(&HttpRequest {
                method,
                target,
                content_type: (method == Method::Patch)
                    .then_some("application/trickle-ice-sdpfrag"),
                bearer: Some(&token),
                body: if method == Method::Patch {
                    b"a=ice-ufrag:abcd\r\n"
                } else {
                    b""
                },
            })
            .unwrap_or_else(|e| panic!("{method:?} {target}: {e}"))
    };
    for target in ["/whip/r/no-such-session", "/whep/r/no-such-session"] {
        assert_status(
            &request(Method::Delete, target),
            404,
            &format!("DELETE {target}"),
        );
        assert_status(
            &request(Method::Patch, target),
            404,
            &format!("PATCH {target}"),
        );
    }
    for endpoint in [Endpoint::Whip, Endpoint::Whep] {
        let location = server
            .client
            .offer(endpoint, "r", &token, &offer(endpoint))
            .unwrap_or_else(|e| panic!("{endpoint:?} offer: {e}"))
            .location;
        let r = request(Method::Patch, &location);
        assert_status(&r, 405, &format!("PATCH {location}"));
    }
}

#[test]
fn garbage_datagrams_are_dropped_and_counted_while_media_flows() {
    const PER_KIND: usize = 700;
    const SPRAY_TIME: Duration = Duration::from_secs(1);
    const BATCH: usize = 50;

    let server = Server::start_with_workers(2);
    let publisher = server.publish("spray", true, Some(VideoConfig::default()));
    let sub = server.subscribe("spray");
    expect_media(&sub, Audio, "subscriber");
    expect_media(&sub, Video, "subscriber");

    let mut ports: BTreeSet<u16> = candidate_ports(publisher.answer());
    ports.extend(candidate_ports(sub.answer()));
    let base = *ports.first().expect("answers carry candidates");
    assert!(
        ports.iter().all(|p| *p == base || *p == base + 1),
        "a 2-worker node uses ports base and base+1, answers name {ports:?}"
    );
    let targets: Vec<SocketAddr> = [base, base + 1]
        .into_iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();

    let metric = |reason: &str| {
        server
            .metrics()
            .sum_where("sfu_udp_dropped_total", &[("reason", reason)])
    };
    let reasons = ["malformed", "unknown_ufrag", "unknown_source"];
    let before: Vec<f64> = reasons.iter().map(|r| metric(r)).collect();
    let total_before = server.metrics().sum("sfu_udp_dropped_total");
    let audio_before = sub.packets(Audio);
    let video_before = sub.packets(Video);

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind spray socket");
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let kinds = [
        NoiseKind::Unclassifiable,
        NoiseKind::StunUnknownUser,
        NoiseKind::RtpLookalike,
    ];
    let total = PER_KIND * kinds.len();
    let started = Instant::now();
    let batches = total.div_ceil(BATCH);
    for i in 0..total {
        let kind = kinds[i % kinds.len()];
        let target = targets[(i / kinds.len()) % targets.len()];
        let datagram = noise::datagram(kind, &mut rng);
        socket.send_to(&datagram, target).expect("send garbage");
        if (i + 1) % BATCH == 0 {
            // Spread the spray so it overlaps live media and never overflows socket buffers.
            let due = started + SPRAY_TIME * ((i + 1) / BATCH) as u32 / batches as u32;
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    let spray_time = started.elapsed();
    let audio_during = sub.packets(Audio) - audio_before;
    let video_during = sub.packets(Video) - video_before;
    thread::sleep(Duration::from_millis(300));

    let after: Vec<f64> = reasons.iter().map(|r| metric(r)).collect();
    for ((reason, b), a) in reasons.iter().zip(&before).zip(&after) {
        let delta = a - b;
        assert!(
            delta >= 0.9 * PER_KIND as f64,
            "sfu_udp_dropped_total{{reason=\"{reason}\"}} rose by {delta}, expected about \
             {PER_KIND} (before {b}, after {a})"
        );
    }
    let total_delta = server.metrics().sum("sfu_udp_dropped_total") - total_before;
    assert!(
        total_delta <= total as f64 + 50.0,
        "drop counters rose by {total_delta} for {total} garbage datagrams: legitimate media \
         is being dropped too"
    );

    // Media kept flowing at its normal rate (50 audio packets/s, 30 frames/s) during the spray.
    let secs = spray_time.as_secs_f64();
    assert!(
        audio_during as f64 >= 0.8 * 50.0 * secs,
        "only {audio_during} audio packets in {spray_time:?} of spray"
    );
    assert!(
        video_during as f64 >= 0.8 * 30.0 * secs,
        "only {video_during} video packets in {spray_time:?} of spray"
    );
    let r = sub.reception();
    assert_eq!(
        r.audio.corrupt + r.video.corrupt,
        0,
        "{:?}",
        r.first_corruption
    );
    assert!(publisher.ice_connected() && sub.ice_connected());
}
