//! Protections against other clients: only a session's creator (or the room's admin) may end
//! it, signaling POSTs are rate-limited per client IP, and sessions are capped per identity,
//! per room and per node.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::{Server, expect_media, wait_until};
use tools::PayloadKind::Audio;
use tools::sample_offer;
use tools::token::{Grants, dev_token};
use tools::whip::{Endpoint, HttpRequest, HttpResponse, Method};

/// Another identity with a valid token for the room cannot end a session (403, media keeps
/// flowing); the creator and an admin of the room can.
#[test]
fn only_the_creator_or_a_room_admin_may_delete_a_session() {
    let server = Server::start();
    let publisher = server.publish("own", true, None);
    let sub = server.subscribe("own");
    expect_media(&sub, Audio, "subscriber");
    let sessions = |kind: &str| {
        server
            .metrics()
            .sum_where("sfu_sessions", &[("kind", kind)])
    };

    let mallory = dev_token("own", "mallory", Grants::PUBLISH_SUBSCRIBE).expect("token");
    for target in [publisher.location(), sub.location()] {
        let r = server.delete(target, &mallory);
        assert_eq!(r.status, 403, "DELETE {target} by another identity: {r:?}");
        assert!(
            r.body.contains("another identity"),
            "the 403 says why: {r:?}"
        );
    }
    let admin_elsewhere = dev_token(
        "elsewhere",
        "root",
        Grants {
            admin: true,
            ..Grants::PUBLISH
        },
    )
    .expect("token");
    let r = server.delete(publisher.location(), &admin_elsewhere);
    assert_eq!(r.status, 403, "an admin of another room: {r:?}");

    // The refused DELETEs ended nothing: both sessions exist and media still arrives.
    assert_eq!(sessions("publish"), 1.0);
    assert_eq!(sessions("subscribe"), 1.0);
    let before = sub.packets(Audio);
    assert!(
        wait_until(Duration::from_secs(3), || sub.packets(Audio) > before + 10),
        "audio stopped after refused DELETEs ({} packets before, {} now)",
        before,
        sub.packets(Audio)
    );

    let admin = dev_token(
        "own",
        "root",
        Grants {
            admin: true,
            ..Grants::SUBSCRIBE
        },
    )
    .expect("token");
    let r = server.delete(sub.location(), &admin);
    assert_eq!(r.status, 200, "DELETE by the room's admin: {r:?}");
    publisher.close().expect("the creator ends its own session");
    assert!(
        wait_until(Duration::from_secs(2), || sessions("publish") == 0.0
            && sessions("subscribe") == 0.0),
        "sessions left after both DELETEs: publish {}, subscribe {}",
        sessions("publish"),
        sessions("subscribe")
    );
}

/// A signaling POST's status, `Retry-After` and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// `POST /dev/token` from the source address `from` (any 127.x.y.z reaches the server on
/// 127.0.0.1), over a raw HTTP/1.1 connection so the source can be chosen.
fn token_request_from(server: &Server, from: IpAddr) -> Answer {
    request_from(server, from, |addr| {
        let body = r#"{"room": "r", "identity": "alice"}"#;
        format!(
            "POST /dev/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    })
}

/// A WebSocket upgrade of `/rtc/r` from the source address `from`: the status it gets (101
/// when it is let through; the connection is then closed without a word).
fn upgrade_request_from(server: &Server, from: IpAddr) -> Answer {
    request_from(server, from, |addr| {
        format!(
            "GET /rtc/r HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    })
}

/// Whether `response` holds a whole answer: its head, and the body its `Content-Length`
/// announces (none for a 101).
fn complete(response: &[u8]) -> bool {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    response.len() >= end + 4 + length
}

/// Send the request `make(server address)` from the source address `from` and read the
/// answer.
fn request_from(server: &Server, from: IpAddr, make: impl FnOnce(SocketAddr) -> String) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: SocketAddr = server
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("base URL is http://ADDR/");
    let request = make(addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let response = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        let mut stream = socket.connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        // Read the head, then as much body as it announces: a connection left open (a 101,
        // or keep-alive after an answer to an upgrade request) gives no end of file.
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("read the response");
            response.extend_from_slice(&chunk[..n]);
            if n == 0 || complete(&response) {
                break;
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    });
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let retry_after = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.trim().to_string());
    Answer {
        status,
        retry_after,
        body: body.to_string(),
    }
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// At 1 request/s with a burst of 3, a quick run of 20 POSTs gets its first 3 through and at
/// least one 429 with `Retry-After` (whole seconds, ≥ 1) and a message; WHIP POSTs and room
/// socket upgrades share the bucket; another client address still gets through.
#[test]
fn signaling_posts_over_the_rate_get_429_with_retry_after() {
    let server = Server::start_with(
        2,
        &[
            ("SFU__LIMITS__SIGNALING_RATE_PER_SEC", "1"),
            ("SFU__LIMITS__SIGNALING_BURST", "3"),
        ],
        &[],
    );
    let answers: Vec<Answer> = (0..20)
        .map(|_| token_request_from(&server, LOCAL))
        .collect();
    for (i, a) in answers.iter().take(3).enumerate() {
        assert_eq!(a.status, 200, "request {i} is within the burst: {a:?}");
    }
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        !refused.is_empty(),
        "20 quick requests at 1/s with a burst of 3 were all accepted: {answers:?}"
    );
    assert!(
        answers.iter().all(|a| a.status == 200 || a.status == 429),
        "{answers:?}"
    );
    for a in &refused {
        let secs: u64 = a
            .retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("429 without a whole-second Retry-After: {a:?}"));
        assert!(secs >= 1, "{a:?}");
        assert!(
            a.body.contains("limits.signaling_rate_per_sec"),
            "the 429 names the setting: {a:?}"
        );
    }

    // A WHIP offer from the same client draws from the same, empty bucket ...
    let token = dev_token("r", "alice", Grants::PUBLISH).expect("token");
    let offer = sample_offer(Endpoint::Whip).expect("offer");
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            server
                .client
                .request(&HttpRequest {
                    method: Method::Post,
                    target: "/whip/r",
                    content_type: Some("application/sdp"),
                    bearer: Some(&token),
                    body: offer.as_bytes(),
                })
                .expect("POST /whip/r")
                .status
        })
        .collect();
    assert!(statuses.contains(&429), "WHIP POSTs: {statuses:?}");
    // ... and so does a room socket's upgrade (each holds a socket and, at its join, a token
    // check) ...
    let upgrade = upgrade_request_from(&server, LOCAL);
    assert_eq!(upgrade.status, 429, "a /rtc upgrade: {upgrade:?}");
    // ... while another client's bucket is full, and reads are never limited.
    let other = token_request_from(&server, OTHER);
    assert_eq!(other.status, 200, "another client address: {other:?}");
    let upgrade = upgrade_request_from(&server, OTHER);
    assert_eq!(upgrade.status, 101, "another client's upgrade: {upgrade:?}");
    server.metrics();
}

/// `limits.signaling_rate_per_sec = 0` switches the limit off.
#[test]
fn a_zero_rate_switches_the_signaling_limit_off() {
    let server = Server::start_with(
        1,
        &[
            ("SFU__LIMITS__SIGNALING_RATE_PER_SEC", "0"),
            ("SFU__LIMITS__SIGNALING_BURST", "1"),
        ],
        &[],
    );
    for i in 0..30 {
        let a = token_request_from(&server, LOCAL);
        assert_eq!(a.status, 200, "request {i} with the limit off: {a:?}");
    }
}

fn offer_status(server: &Server, endpoint: Endpoint, room: &str, identity: &str) -> HttpResponse {
    let grants = match endpoint {
        Endpoint::Whip => Grants::PUBLISH,
        Endpoint::Whep => Grants::SUBSCRIBE,
    };
    let token = dev_token(room, identity, grants).expect("token");
    let offer = sample_offer(endpoint).expect("offer");
    server
        .client
        .request(&HttpRequest {
            method: Method::Post,
            target: &format!("/{}/{room}", endpoint.path_segment()),
            content_type: Some("application/sdp"),
            bearer: Some(&token),
            body: offer.as_bytes(),
        })
        .expect("POST an offer")
}

/// Each session cap refuses the session past it, before the node sees the offer (no session
/// is created), with a message naming the cap's key: 429 for an identity's or a room's cap,
/// 503 for the server's. Ending a session frees its place.
#[test]
fn session_caps_per_identity_room_and_node() {
    let server = Server::start_with(
        2,
        &[
            ("SFU__LIMITS__MAX_SESSIONS_PER_IDENTITY", "2"),
            ("SFU__LIMITS__MAX_SESSIONS_PER_ROOM", "3"),
            ("SFU__LIMITS__MAX_SESSIONS", "4"),
        ],
        &[],
    );
    let sessions = || server.metrics().sum("sfu_sessions");
    let created = |r: &HttpResponse, what: &str| {
        assert_eq!(r.status, 201, "{what}: {r:?}");
        r.location.clone().expect("Location")
    };
    let refused = |r: &HttpResponse, status: u16, key: &str, what: &str| {
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert!(
            r.body.contains(key),
            "{what}: the message names {key}: {r:?}"
        );
    };

    let alice_1 = created(
        &offer_status(&server, Endpoint::Whep, "a", "alice"),
        "alice 1",
    );
    created(
        &offer_status(&server, Endpoint::Whip, "a", "alice"),
        "alice 2",
    );
    let r = offer_status(&server, Endpoint::Whep, "b", "alice");
    refused(
        &r,
        429,
        "limits.max_sessions_per_identity",
        "alice 3, in another room",
    );
    assert_eq!(sessions(), 2.0, "the refused offer never reached the node");

    created(
        &offer_status(&server, Endpoint::Whep, "a", "bob"),
        "room a's 3rd",
    );
    let r = offer_status(&server, Endpoint::Whep, "a", "carol");
    refused(&r, 429, "limits.max_sessions_per_room", "room a's 4th");

    created(
        &offer_status(&server, Endpoint::Whep, "b", "carol"),
        "4th in total",
    );
    let r = offer_status(&server, Endpoint::Whep, "c", "dave");
    refused(&r, 503, "limits.max_sessions", "5th in total");
    assert_eq!(sessions(), 4.0);

    // Alice ends one of hers: she, room a and the server each have a place again.
    let token = dev_token("a", "alice", Grants::SUBSCRIBE).expect("token");
    let r = server.delete(&alice_1, &token);
    assert_eq!(r.status, 200, "{r:?}");
    created(
        &offer_status(&server, Endpoint::Whep, "a", "alice"),
        "alice after a DELETE",
    );
}
