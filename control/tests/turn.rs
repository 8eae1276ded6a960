//! TURN credentials over HTTP: the `Link` headers of WHIP and WHEP answers (RFC 9725) and
//! `GET /api/turn`, on a server with `[turn]` set and on one without.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use support::Server;
use tools::sample_offer;
use tools::token::{Grants, dev_token};
use tools::whip::Endpoint;

const SECRET: &str = "turn-shared-secret-for-tests";
const UDP: &str = "turn:turn.example.com:3478?transport=udp";
const TLS: &str = "turns:turn.example.com:5349?transport=tcp";
const TTL: u64 = 600;

fn start_with_turn() -> Server {
    let urls = format!(r#"["{UDP}", "{TLS}"]"#);
    Server::start_with(
        1,
        &[
            ("SFU__TURN__SECRET", SECRET),
            ("SFU__TURN__URLS", &urls),
            ("SFU__TURN__TTL_SECS", "600"),
        ],
        &[],
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(tools::whip::HTTP_TIMEOUT))
            .build(),
    )
}

/// POSTs a sample offer; returns the status and every `Link` header value.
fn offer_links(server: &Server, endpoint: Endpoint, identity: &str) -> (u16, Vec<String>) {
    let grants = match endpoint {
        Endpoint::Whip => Grants::PUBLISH,
        Endpoint::Whep => Grants::SUBSCRIBE,
    };
    let token = dev_token("turn-room", identity, grants).expect("token");
    let offer = sample_offer(endpoint).expect("offer");
    let url = server
        .client
        .url(&format!("/{}/turn-room", endpoint.path_segment()));
    let response = agent()
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/sdp")
        .send(offer.as_bytes())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let links = response
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().expect("ASCII Link header").to_string())
        .collect();
    (response.status().as_u16(), links)
}

/// `GET /api/turn` with `token` (if any): the status, the `Cache-Control` header and the body.
fn get_turn(server: &Server, token: Option<&str>) -> (u16, Option<String>, String) {
    let url = server.client.url("/api/turn");
    let mut request = agent().get(&url);
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let cache = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.body_mut().read_to_string().expect("body");
    (response.status().as_u16(), cache, body)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The username's expiry must be `ttl` after the request, give or take the test's own delays.
fn assert_expiry(username: &str, identity: &str) {
    let (expiry, name) = username
        .split_once(':')
        .unwrap_or_else(|| panic!("username {username:?} is not expiry:identity"));
    assert_eq!(name, identity);
    let expiry: u64 = expiry.parse().expect("numeric expiry");
    let now = unix_now();
    assert!(
        expiry >= now + TTL - 60 && expiry <= now + TTL + 1,
        "expiry {expiry} is not about {TTL} s after {now}"
    );
}

/// One `Link` per configured server, in RFC 9725's form, with a password that is the
/// HMAC-SHA1 of the username under the shared secret.
fn assert_links(links: &[String], identity: &str) {
    assert_eq!(links.len(), 2, "one Link per TURN URL: {links:?}");
    for (link, url) in links.iter().zip([UDP, TLS]) {
        let rest = link
            .strip_prefix(&format!("<{url}>; rel=\"ice-server\"; username=\""))
            .unwrap_or_else(|| panic!("{link:?} does not start with <{url}> and rel"));
        let (username, rest) = rest.split_once('"').expect("quoted username");
        let credential = rest
            .strip_prefix("; credential=\"")
            .and_then(|r| r.strip_suffix("\"; credential-type=\"password\""))
            .unwrap_or_else(|| panic!("{link:?}: credential and credential-type"));
        assert_expiry(username, identity);
        assert_eq!(credential, control::turn::credential(SECRET, username));
    }
}

#[test]
fn whip_and_whep_answers_carry_turn_links_and_api_turn_needs_a_token() {
    let server = start_with_turn();

    let (status, links) = offer_links(&server, Endpoint::Whip, "alice");
    assert_eq!(status, 201);
    assert_links(&links, "alice");
    let (status, links) = offer_links(&server, Endpoint::Whep, "bob");
    assert_eq!(status, 201);
    assert_links(&links, "bob");

    let (status, _, body) = get_turn(&server, None);
    assert_eq!(status, 401, "no token: {body}");
    let (status, _, body) = get_turn(&server, Some("not-a-token"));
    assert_eq!(status, 401, "bad token: {body}");

    // Any valid token will do, whatever its room and grants.
    let token = dev_token("elsewhere", "carol", Grants::SUBSCRIBE).expect("token");
    let (status, cache, body) = get_turn(&server, Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        cache.as_deref(),
        Some("no-store"),
        "credentials must not be cached"
    );
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(json["urls"], serde_json::json!([UDP, TLS]));
    assert_eq!(json["ttl"], TTL);
    let username = json["username"].as_str().expect("username");
    assert_expiry(username, "carol");
    assert_eq!(
        json["credential"].as_str(),
        Some(control::turn::credential(SECRET, username).as_str())
    );
}

#[test]
fn without_turn_config_there_are_no_links_and_api_turn_is_404() {
    let server = Server::start_with_workers(1);
    let (status, links) = offer_links(&server, Endpoint::Whip, "alice");
    assert_eq!(status, 201);
    assert_eq!(links, Vec::<String>::new());

    let (status, _, _) = get_turn(&server, None);
    assert_eq!(status, 401, "the token is checked first");
    let token = dev_token("turn-room", "alice", Grants::PUBLISH).expect("token");
    let (status, _, body) = get_turn(&server, Some(&token));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("turn.secret"), "{body}");
}
