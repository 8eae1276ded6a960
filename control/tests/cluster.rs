//! control as cluster head over real QUIC links: `control serve` with `[cluster]` and no media
//! of its own, media nodes (the library's node and uplink, as `sfu run` runs them) that join
//! it, rooms spread over them, a node that stops, and nodes that must be refused.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::cluster::{TempDir, TestNode};
use support::{Server, candidate_ports, expect_media, wait_until};
use tools::PayloadKind::{Audio, Video};
use tools::VideoConfig;
use tools::token::{Grants, dev_token};
use tools::whip::{Endpoint, HttpRequest, Method};

const SECRET: &str = "cluster secret for the tests";
/// Silence before a node is suspect / dead, shortened for the test (nodes report load every
/// second).
const SUSPECT_MS: &str = "1500";
const DEAD_MS: &str = "2500";

struct Cluster {
    server: Server,
    control: String,
    cert: PathBuf,
    _dir: TempDir,
}

fn cluster() -> Cluster {
    cluster_with(&[])
}

/// A cluster head with `extra` environment overrides.
fn cluster_with(extra: &[(&str, &str)]) -> Cluster {
    let dir = TempDir::new();
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let mut env = vec![
        ("SFU__AUTH__DEV", "true"),
        ("SFU__CLUSTER__LISTEN", "127.0.0.1:0"),
        ("SFU__CLUSTER__SECRET", SECRET),
        ("SFU__CLUSTER__TLS_CERT", &cert_s),
        ("SFU__CLUSTER__TLS_KEY", &key_s),
        ("SFU__CLUSTER__SUSPECT_AFTER_MS", SUSPECT_MS),
        ("SFU__CLUSTER__DEAD_AFTER_MS", DEAD_MS),
    ];
    env.extend_from_slice(extra);
    let server = Server::start_serve(&env, &[]);
    let control = server
        .log_line("cluster: ")
        .expect("control prints its cluster address before it is ready");
    assert!(cert.exists(), "control wrote its generated certificate");
    Cluster {
        server,
        control,
        cert,
        _dir: dir,
    }
}

fn nodes_in(server: &Server, state: &str) -> f64 {
    server
        .metrics()
        .sum_where("sfu_cluster_nodes", &[("state", state)])
}

#[test]
fn rooms_spread_over_joined_nodes_and_move_off_a_dead_one() {
    let c = cluster();
    // No media node yet: an offer gets 503 that says so.
    let token = dev_token("early", "alice", Grants::PUBLISH).expect("token");
    let offer = tools::sample_offer(Endpoint::Whip).expect("offer");
    let early = c
        .server
        .client
        .request(&HttpRequest {
            method: Method::Post,
            target: "/whip/early",
            content_type: Some("application/sdp"),
            bearer: Some(&token),
            body: offer.as_bytes(),
        })
        .expect("POST");
    assert_eq!(early.status, 503, "{early:?}");
    assert!(early.body.contains("no media node"), "{early:?}");

    let n1 = TestNode::start("n1", &c.control, &c.cert, SECRET);
    let n2 = TestNode::start("n2", &c.control, &c.cert, SECRET);
    assert!(
        wait_until(Duration::from_secs(10), || nodes_in(&c.server, "up") == 2.0),
        "both nodes registered: {}",
        c.server.log_tail(20)
    );

    // Six rooms, each with a publisher and a subscriber; every room's sessions are on one
    // node, and both nodes get rooms.
    let mut rooms = Vec::new();
    for i in 0..6 {
        let room = format!("room-{i}");
        let publisher = c.server.publish(&room, true, Some(VideoConfig::default()));
        let subscriber = c.server.subscribe(&room);
        expect_media(&subscriber, Audio, &room);
        expect_media(&subscriber, Video, &room);
        let ports = candidate_ports(publisher.answer());
        assert_eq!(
            ports,
            candidate_ports(subscriber.answer()),
            "{room}: one node"
        );
        let on_n1 = ports.is_subset(&n1.ports);
        assert!(on_n1 || ports.is_subset(&n2.ports), "{room}: {ports:?}");
        rooms.push((room, on_n1, publisher, subscriber));
    }
    // Every node's link reports its round-trip time, and each room was placed once (its
    // subscriber joined it where it was).
    assert!(
        wait_until(Duration::from_secs(5), || c
            .server
            .metrics()
            .select("sfu_cluster_link_rtt_seconds", &[])
            .count()
            == 2),
        "link RTT of both nodes in /metrics"
    );
    let m = c.server.metrics();
    assert_eq!(
        m.sum_where("sfu_cluster_placements_total", &[("placed", "new")]),
        6.0
    );
    assert_eq!(
        m.sum_where("sfu_cluster_placements_total", &[("placed", "kept")]),
        6.0
    );
    let on_n1 = rooms.iter().filter(|r| r.1).count();
    assert!(
        (1..6).contains(&on_n1),
        "rooms spread over both nodes ({on_n1} of 6 on n1)"
    );

    // n1 stops without a word: dead after the timeout, its sessions forgotten (404), and its
    // rooms start again on n2.
    let (n1_room, _, n1_publisher, _) = rooms
        .iter()
        .find(|r| r.1)
        .map(|(room, on, p, s)| (room.clone(), *on, p.location().to_string(), s))
        .expect("a room on n1");
    drop(n1);
    assert!(
        wait_until(Duration::from_secs(10), || nodes_in(&c.server, "dead")
            == 1.0),
        "n1 declared dead: {}",
        c.server.log_tail(20)
    );
    assert_eq!(c.server.metrics().sum("sfu_cluster_failovers_total"), 1.0);
    let token = dev_token(&n1_room, "alice", Grants::PUBLISH).expect("token");
    assert_eq!(c.server.delete(&n1_publisher, &token).status, 404);
    let publisher = c
        .server
        .publish(&n1_room, true, Some(VideoConfig::default()));
    let subscriber = c.server.subscribe(&n1_room);
    assert!(candidate_ports(publisher.answer()).is_subset(&n2.ports));
    expect_media(&subscriber, Audio, "re-placed room");
    expect_media(&subscriber, Video, "re-placed room");
    // The rooms that were on n2 kept their media throughout.
    for (room, on_n1, _, subscriber) in &rooms {
        if !on_n1 {
            let before = subscriber.packets(Audio);
            assert!(
                subscriber.wait_packets(Audio, before + 25, Duration::from_secs(5)),
                "{room} on n2 kept forwarding"
            );
        }
    }
}

fn api(c: &Cluster, method: Method, target: &str, token: &str) -> (u16, serde_json::Value) {
    let r = c
        .server
        .client
        .request(&HttpRequest {
            method,
            target,
            content_type: None,
            bearer: Some(token),
            body: b"",
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    let json = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, json)
}

/// Nodes n1 and n2 joined to `c`, both up.
fn two_nodes(c: &Cluster) -> (TestNode, TestNode) {
    let n1 = TestNode::start("n1", &c.control, &c.cert, SECRET);
    let n2 = TestNode::start("n2", &c.control, &c.cert, SECRET);
    assert!(
        wait_until(Duration::from_secs(10), || nodes_in(&c.server, "up") == 2.0),
        "n1 and n2 registered: {}",
        c.server.log_tail(20)
    );
    (n1, n2)
}

fn admin_token() -> String {
    let admin = Grants {
        admin: true,
        ..Grants::default()
    };
    dev_token("*", "operator", admin).expect("token")
}

#[test]
fn the_admin_api_shows_nodes_and_rooms_and_a_drained_node_takes_no_new_room() {
    let c = cluster();
    let (n1, n2) = two_nodes(&c);
    let admin = admin_token();

    // Only an admin token for every room may use the API.
    let room_admin = dev_token(
        "room-a",
        "mallory",
        Grants {
            admin: true,
            ..Grants::default()
        },
    )
    .expect("token");
    assert_eq!(api(&c, Method::Get, "/api/nodes", &room_admin).0, 403);
    assert_eq!(api(&c, Method::Get, "/api/nodes", "garbage").0, 401);

    let publisher = c
        .server
        .publish("room-a", true, Some(VideoConfig::default()));
    let subscriber = c.server.subscribe("room-a");
    expect_media(&subscriber, Video, "room-a");
    let a_on_n1 = candidate_ports(publisher.answer()).is_subset(&n1.ports);
    let (a_node, other, other_ports) = if a_on_n1 {
        ("n1", "n2", &n2.ports)
    } else {
        ("n2", "n1", &n1.ports)
    };

    let (status, nodes) = api(&c, Method::Get, "/api/nodes", &admin);
    assert_eq!(status, 200);
    let nodes = nodes.as_array().expect("an array").clone();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for n in &nodes {
        assert_eq!(n["state"], "up", "{n}");
        let expected = if n["id"] == a_node { 2 } else { 0 };
        assert_eq!(n["sessions"], expected, "{n}");
    }
    let (status, rooms) = api(&c, Method::Get, "/api/rooms", &admin);
    assert_eq!(status, 200);
    assert_eq!(
        rooms,
        serde_json::json!([{ "room": "room-a", "nodes": [a_node] }])
    );
    let (status, room) = api(&c, Method::Get, "/api/rooms/room-a", &admin);
    assert_eq!(status, 200);
    assert_eq!(room["sessions"].as_array().map(Vec::len), Some(2), "{room}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (_, room) = api(&c, Method::Get, "/api/rooms/room-a", &admin);
            room["tracks"].as_array().map(Vec::len) == Some(2)
        }),
        "the publisher's audio and video tracks are listed"
    );
    assert_eq!(api(&c, Method::Get, "/api/rooms/nowhere", &admin).0, 404);

    // A node that is alive cannot be forgotten; an unknown one is not found.
    assert_eq!(
        api(&c, Method::Delete, &format!("/api/nodes/{a_node}"), &admin).0,
        409
    );
    assert_eq!(api(&c, Method::Delete, "/api/nodes/ghost", &admin).0, 404);

    // Drain the node that holds room-a: nothing new lands there, not even a session of
    // room-a (it goes to the other node), and room-a's sessions keep their media.
    let (status, drained) = api(
        &c,
        Method::Post,
        &format!("/api/nodes/{a_node}/drain"),
        &admin,
    );
    assert_eq!((status, drained["state"].clone()), (200, "draining".into()));
    assert_eq!(
        api(&c, Method::Post, "/api/nodes/ghost/drain", &admin).0,
        404
    );
    for i in 0..5 {
        let p = c.server.publish(&format!("new-{i}"), true, None);
        assert!(
            candidate_ports(p.answer()).is_subset(other_ports),
            "new-{i} was not placed on {other} while {a_node} drains"
        );
    }
    let late = c.server.subscribe("room-a");
    assert!(
        candidate_ports(late.answer()).is_subset(other_ports),
        "a new session of room-a landed on the draining node {a_node}"
    );
    let (_, room) = api(&c, Method::Get, "/api/rooms/room-a", &admin);
    let mut on = room["nodes"].as_array().cloned().unwrap_or_default();
    on.sort_by_key(|n| n.to_string());
    assert_eq!(
        on,
        vec![serde_json::json!("n1"), serde_json::json!("n2")],
        "{room}"
    );
    let before = subscriber.packets(Audio);
    assert!(subscriber.wait_packets(Audio, before + 25, Duration::from_secs(5)));
    let (status, undrained) = api(
        &c,
        Method::Post,
        &format!("/api/nodes/{a_node}/undrain"),
        &admin,
    );
    assert_eq!((status, undrained["state"].clone()), (200, "up".into()));

    // Ending the room ends its sessions on both nodes.
    let (status, ended) = api(&c, Method::Delete, "/api/rooms/room-a", &admin);
    assert_eq!((status, ended["ended"].clone()), (200, 3.into()), "{ended}");
    drop(late);
    assert_eq!(api(&c, Method::Get, "/api/rooms/room-a", &admin).0, 404);

    // A node that drains itself (`sfu run` on SIGTERM) tells control, which stops placing
    // rooms on it.
    n1.node.drain();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (_, nodes) = api(&c, Method::Get, "/api/nodes", &admin);
            nodes
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["id"] == "n1" && n["state"] == "draining")
        }),
        "n1 shows as draining"
    );
    for i in 0..3 {
        let p = c.server.publish(&format!("late-{i}"), true, None);
        assert!(candidate_ports(p.answer()).is_subset(&n2.ports));
    }
    drop((n1, n2));
}

#[test]
fn a_drain_that_outlasts_its_timeout_ends_the_sessions_and_a_dead_node_can_be_forgotten() {
    let c = cluster_with(&[("SFU__NODE__DRAIN_TIMEOUT_SECS", "2")]);
    let n1 = TestNode::start("n1", &c.control, &c.cert, SECRET);
    assert!(wait_until(Duration::from_secs(10), || nodes_in(
        &c.server, "up"
    ) == 1.0));
    let admin = admin_token();
    let publisher = c.server.publish("long", true, None);
    let subscriber = c.server.subscribe("long");
    expect_media(&subscriber, Audio, "long");

    // The node's load reports reach /metrics: its sessions, and the CPU its process uses
    // (this test's process: it forwards the room, so it is busy).
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = c.server.metrics();
            m.sum_where("sfu_cluster_node_sessions", &[("node", "n1")]) == 2.0
                && m.sum_where("sfu_cluster_node_packets_in_total", &[("node", "n1")]) > 0.0
                && m.select("sfu_cluster_node_cpu_cores", &[("node", "n1")])
                    .count()
                    == 1
        }),
        "n1's load in /metrics"
    );

    // Drained with sessions that do not end: after node.drain_timeout_secs control ends
    // them, so their clients post again elsewhere; the node stays draining.
    let (status, _) = api(&c, Method::Post, "/api/nodes/n1/drain", &admin);
    assert_eq!(status, 200);
    assert!(
        wait_until(Duration::from_secs(15), || n1
            .node
            .held_sessions()
            .is_empty()),
        "the drain timeout ended n1's sessions: {}",
        c.server.log_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(5), || c
            .server
            .logged("drain timeout (node.drain_timeout_secs): ended")),
        "control logs the sessions it ended"
    );
    let token = dev_token("long", "alice", Grants::PUBLISH).expect("token");
    assert_eq!(c.server.delete(publisher.location(), &token).status, 404);
    let (_, nodes) = api(&c, Method::Get, "/api/nodes", &admin);
    assert_eq!(nodes[0]["state"], "draining", "{nodes}");
    assert_eq!(nodes[0]["sessions"], 0, "{nodes}");

    // Stopped, it is dead; then an admin may forget it.
    drop(n1);
    assert!(
        wait_until(Duration::from_secs(10), || nodes_in(&c.server, "dead")
            == 1.0),
        "n1 declared dead"
    );
    let (status, forgotten) = api(&c, Method::Delete, "/api/nodes/n1", &admin);
    assert_eq!((status, forgotten["forgotten"].clone()), (200, true.into()));
    let (_, nodes) = api(&c, Method::Get, "/api/nodes", &admin);
    assert_eq!(nodes, serde_json::json!([]));
    assert_eq!(nodes_in(&c.server, "dead"), 0.0);
    drop(subscriber);
}

#[test]
fn a_session_placed_beside_a_draining_node_gets_the_room_through_a_relay() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sfu_core=debug,sfu_link=debug")
        .with_test_writer()
        .try_init();
    let c = cluster();
    let (n1, n2) = two_nodes(&c);
    let admin = admin_token();
    let publisher = c
        .server
        .publish("spans", true, Some(VideoConfig::default()));
    let on_n1 = candidate_ports(publisher.answer()).is_subset(&n1.ports);
    let (origin, other_ports) = if on_n1 {
        ("n1", &n2.ports)
    } else {
        ("n2", &n1.ports)
    };
    let (status, _) = api(
        &c,
        Method::Post,
        &format!("/api/nodes/{origin}/drain"),
        &admin,
    );
    assert_eq!(status, 200);
    // The room's new session lands on the other node, which relays the room from the
    // draining one: the subscriber gets the publisher's audio and video across the link.
    let subscriber = c.server.subscribe("spans");
    assert!(
        candidate_ports(subscriber.answer()).is_subset(other_ports),
        "the subscriber landed beside the draining node"
    );
    expect_media(&subscriber, Audio, "relayed room");
    expect_media(&subscriber, Video, "relayed room");
    let (_, room) = api(&c, Method::Get, "/api/rooms/spans", &admin);
    assert_eq!(
        room["nodes"].as_array().map(Vec::len),
        Some(2),
        "the room spans both nodes: {room}"
    );
    // Both nodes say what they relay: the other node receives the publisher's two tracks
    // from the origin, which sends the room to it.
    let relay = if origin == "n1" { "n2" } else { "n1" };
    // Each answer named the node that serves it (X-Sfu-Node).
    assert_eq!(publisher.node(), Some(origin));
    assert_eq!(subscriber.node(), Some(relay));
    let node_relays = |room: &serde_json::Value, node: &str| {
        room["relays"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["node"] == node).cloned())
            .unwrap_or_default()
    };
    let at_relay = node_relays(&room, relay);
    assert_eq!(at_relay["from"][0]["node"], origin, "{room}");
    assert_eq!(
        at_relay["from"][0]["tracks"].as_array().map(Vec::len),
        Some(2),
        "{room}"
    );
    assert_eq!(node_relays(&room, origin)["to"], serde_json::json!([relay]));
    let tracks = room["tracks"].as_array().cloned().unwrap_or_default();
    assert_eq!(tracks.len(), 2, "{room}");
    for t in &tracks {
        assert_eq!(t["relayed_to"], serde_json::json!([relay]), "{room}");
    }
    // The link's figures reach control's /metrics through the nodes' load reports: the
    // origin sent the packets the other node received, and the link is up.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = c.server.metrics();
            let sent = m.sum_where(
                "sfu_cluster_relay_packets_total",
                &[("node", origin), ("peer", relay), ("direction", "out")],
            );
            let received = m.sum_where(
                "sfu_cluster_relay_packets_total",
                &[("node", relay), ("peer", origin), ("direction", "in")],
            );
            sent > 50.0
                && received > 50.0
                && m.sum_where("sfu_cluster_relay_up", &[("node", relay)]) == 1.0
        }),
        "relay figures in /metrics"
    );
    drop((n1, n2));
}

#[test]
fn a_wrong_secret_and_a_taken_id_are_refused() {
    let c = cluster();
    let n1 = TestNode::start("n1", &c.control, &c.cert, SECRET);
    assert!(wait_until(Duration::from_secs(10), || nodes_in(
        &c.server, "up"
    ) == 1.0));
    let _intruder = TestNode::start("n2", &c.control, &c.cert, "not the cluster secret");
    let _twin = TestNode::start("n1", &c.control, &c.cert, SECRET);
    assert!(
        wait_until(Duration::from_secs(10), || c
            .server
            .logged("wrong cluster secret")
            && c.server.logged("held by a node that is up")),
        "both refusals logged: {}",
        c.server.log_tail(30)
    );
    assert_eq!(nodes_in(&c.server, "up"), 1.0);

    // The node itself restarting at once is no impostor: its link closed, so it registers
    // again straight away as a new incarnation.
    drop(n1);
    let _n1 = TestNode::start("n1", &c.control, &c.cert, SECRET);
    assert!(
        wait_until(Duration::from_secs(10), || c
            .server
            .logged("node registered node=n1 incarnation=2")),
        "the restarted node registered again: {}",
        c.server.log_tail(30)
    );
    assert_eq!(nodes_in(&c.server, "up"), 1.0);
}
