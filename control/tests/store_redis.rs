//! Two control instances sharing one Redis (`[store] redis_url`) behave as one: a session
//! created through one is deleted through the other, a subscriber through the other reaches a
//! room whose node holds its link to the first, and a Redis outage refuses new sessions
//! (503 naming the store, `/readyz` 503, `/healthz` 200) while existing media continues, until
//! Redis answers again. Needs `redis-server` (Debian package `redis-server`).

mod support;

use std::time::Duration;

use control::store::redis::{RedisStore, room_channel, roster_key};
use control::store::{RoomFeed, RosterEntry, RosterJoin};
use sfu_core::ids::SessionId;
use support::cluster::{TempDir, TestNode};
use support::redis_server::{Redis, SECRET, instance};
use support::{Server, candidate_ports, expect_media, wait_until};
use tools::PayloadKind::{Audio, Video};
use tools::VideoConfig;
use tools::token::{Grants, dev_token};
use tools::whip::{Endpoint, HttpRequest, HttpResponse, Method};

fn offer(server: &Server, room: &str) -> HttpResponse {
    let token = dev_token(room, "late", Grants::PUBLISH).expect("token");
    let sdp = tools::sample_offer(Endpoint::Whip).expect("offer");
    server
        .client
        .request(&HttpRequest {
            method: Method::Post,
            target: &format!("/whip/{room}"),
            content_type: Some("application/sdp"),
            bearer: Some(&token),
            body: sdp.as_bytes(),
        })
        .expect("POST")
}

fn get(server: &Server, path: &str) -> HttpResponse {
    server
        .client
        .request(&HttpRequest {
            method: Method::Get,
            target: path,
            content_type: None,
            bearer: None,
            body: &[],
        })
        .expect("GET")
}

fn up_nodes(server: &Server) -> f64 {
    server
        .metrics()
        .sum_where("sfu_cluster_nodes", &[("state", "up")])
}

/// An admin API call with an admin token for every room.
fn admin_call(server: &Server, method: Method, target: &str) -> HttpResponse {
    let admin = dev_token(
        "*",
        "operator",
        Grants {
            admin: true,
            ..Grants::default()
        },
    )
    .expect("token");
    server
        .client
        .request(&HttpRequest {
            method,
            target,
            content_type: None,
            bearer: Some(&admin),
            body: b"",
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"))
}

fn session_of(location: &str) -> SessionId {
    location
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no session id in {location:?}"))
}

#[test]
fn two_instances_share_sessions_and_ride_out_a_redis_restart() {
    let mut redis = Redis::start();
    let dir = TempDir::new();
    let a = instance(&redis, &dir);
    let b = instance(&redis, &dir);
    let control_a = a
        .log_line("cluster: ")
        .expect("A prints its cluster address");
    let node = TestNode::start("n1", &control_a, &dir.0.join("cert.pem"), SECRET);
    assert!(
        wait_until(Duration::from_secs(15), || up_nodes(&a) == 1.0
            && up_nodes(&b) == 1.0),
        "n1 is up on A (its link) and on B (through the registry): A {} / B {}\n{}",
        up_nodes(&a),
        up_nodes(&b),
        b.log_tail(30)
    );
    assert_eq!(get(&a, "/readyz").status, 200);
    assert_eq!(get(&b, "/readyz").status, 200);

    // A room published through A, watched through B: B forwards the offer to A's node.
    let publisher = a.publish("shared", true, Some(VideoConfig::default()));
    let subscriber = b.subscribe("shared");
    expect_media(&subscriber, Audio, "subscriber through B");
    expect_media(&subscriber, Video, "subscriber through B");
    assert!(candidate_ports(subscriber.answer()).is_subset(&node.ports));
    assert!(candidate_ports(publisher.answer()).is_subset(&node.ports));

    // A session created through A is deleted through B.
    let doomed = a.publish("doomed", true, None);
    let session = session_of(doomed.location());
    assert!(node.holds(session));
    let token = dev_token("doomed", "publisher", Grants::PUBLISH).expect("token");
    let deleted = b.delete(doomed.location(), &token);
    assert_eq!(deleted.status, 200, "{deleted:?}\n{}", b.log_tail(30));
    assert!(
        wait_until(Duration::from_secs(5), || !node.holds(session)),
        "the node ended the session B deleted"
    );
    assert_eq!(
        a.delete(doomed.location(), &token).status,
        404,
        "gone for A too"
    );
    // Its counts went with it: the room is no longer listed on either instance.
    for server in [&a, &b] {
        let rooms = admin_call(server, Method::Get, "/api/rooms");
        assert_eq!(rooms.status, 200, "{rooms:?}");
        assert!(rooms.body.contains("\"shared\""), "{rooms:?}");
        assert!(!rooms.body.contains("\"doomed\""), "{rooms:?}");
    }

    // An admin call may reach either instance: B passes a drain of A's node to A, which
    // runs the node's health; nothing new lands on it, through either instance.
    let drained = admin_call(&b, Method::Post, "/api/nodes/n1/drain");
    assert_eq!(drained.status, 200, "{drained:?}\n{}", b.log_tail(20));
    assert!(drained.body.contains("\"draining\""), "{drained:?}");
    let on_a = admin_call(&a, Method::Get, "/api/nodes");
    assert!(on_a.body.contains("\"draining\""), "{on_a:?}");
    assert!(
        wait_until(Duration::from_secs(10), || offer(&b, "while-drained")
            .status
            == 503),
        "B places nothing on the draining node (it learns the state from the registry)"
    );
    assert_eq!(offer(&a, "while-drained").status, 503);
    let forget = admin_call(&b, Method::Delete, "/api/nodes/n1");
    assert_eq!(forget.status, 409, "{forget:?}");
    let undrained = admin_call(&b, Method::Post, "/api/nodes/n1/undrain");
    assert_eq!(undrained.status, 200, "{undrained:?}");
    assert!(
        wait_until(Duration::from_secs(10), || up_nodes(&a) == 1.0
            && up_nodes(&b) == 1.0),
        "n1 up again on both instances"
    );

    // Redis stops: new sessions are refused with a message naming the store, liveness holds,
    // readiness does not, and the media already flowing continues.
    redis.stop();
    let refused = offer(&a, "later");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused
            .body
            .contains("state store is unreachable (store.redis_url)"),
        "{refused:?}"
    );
    assert_eq!(offer(&b, "later").status, 503);
    assert_eq!(get(&a, "/healthz").status, 200);
    assert_eq!(get(&b, "/healthz").status, 200);
    let not_ready = get(&a, "/readyz");
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert!(not_ready.body.contains("state store"), "{not_ready:?}");
    let metrics = a.metrics();
    assert_eq!(metrics.sum_where("sfu_store_up", &[]), 0.0);
    assert!(metrics.sum_where("sfu_store_errors_total", &[]) > 0.0);
    let before = subscriber.packets(Audio);
    assert!(
        wait_until(Duration::from_secs(5), || subscriber.packets(Audio)
            > before + 20),
        "media continues while Redis is down"
    );
    // A few registry periods pass: the node is not dropped for the outage.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(up_nodes(&a), 1.0);
    assert_eq!(up_nodes(&b), 1.0);

    // Redis is back (empty): both instances serve new sessions again by themselves.
    redis.restart();
    for (name, server) in [("A", &a), ("B", &b)] {
        let mut last = None;
        let served = wait_until(Duration::from_secs(30), || {
            let response = offer(server, "after");
            let ok = response.status == 201;
            last = Some(response);
            ok
        });
        assert!(
            served,
            "{name} serves offers after Redis restarted: {last:?}\n{}",
            server.log_tail(30)
        );
    }
    assert_eq!(get(&a, "/readyz").status, 200);
    assert!(a.metrics().sum_where("sfu_store_up", &[]) == 1.0);
    let after = subscriber.packets(Audio);
    assert!(
        wait_until(Duration::from_secs(5), || subscriber.packets(Audio) > after),
        "media still flows after the outage"
    );
    drop(publisher);
}

#[test]
fn a_room_spans_nodes_held_by_different_instances() {
    let redis = Redis::start();
    let dir = TempDir::new();
    let a = instance(&redis, &dir);
    let b = instance(&redis, &dir);
    let cert = dir.0.join("cert.pem");
    let control_a = a.log_line("cluster: ").expect("A's cluster address");
    let control_b = b.log_line("cluster: ").expect("B's cluster address");
    let n1 = TestNode::start("n1", &control_a, &cert, SECRET);
    let n2 = TestNode::start("n2", &control_b, &cert, SECRET);
    assert!(
        wait_until(Duration::from_secs(15), || up_nodes(&a) == 2.0
            && up_nodes(&b) == 2.0),
        "n1 (A's link) and n2 (B's) up on both instances: A {} / B {}",
        up_nodes(&a),
        up_nodes(&b)
    );

    // A room published through A lands on one node; drained (through A, whoever holds it),
    // the room's next session, offered to B, lands on the other node. B has the two nodes
    // relay the room, reaching the node it does not hold through the instance that does,
    // with the relay address that instance published in the registry.
    let publisher = a.publish("across", true, Some(VideoConfig::default()));
    let origin = publisher.node().expect("X-Sfu-Node").to_string();
    let other = if origin == "n1" { "n2" } else { "n1" };
    let drained = admin_call(&a, Method::Post, &format!("/api/nodes/{origin}/drain"));
    assert_eq!(drained.status, 200, "{drained:?}");
    assert!(
        wait_until(Duration::from_secs(10), || admin_call(
            &b,
            Method::Get,
            "/api/nodes"
        )
        .body
        .contains("\"draining\"")),
        "B learns of the drain from the registry"
    );
    let subscriber = b.subscribe("across");
    assert_eq!(subscriber.node(), Some(other));
    let other_ports = if other == "n1" { &n1.ports } else { &n2.ports };
    assert!(candidate_ports(subscriber.answer()).is_subset(other_ports));
    expect_media(&subscriber, Audio, "relayed between instances' nodes");
    expect_media(&subscriber, Video, "relayed between instances' nodes");

    // Either instance shows the relay, asking each node through whoever holds it.
    for server in [&a, &b] {
        let room = admin_call(server, Method::Get, "/api/rooms/across");
        assert_eq!(room.status, 200, "{room:?}");
        let room: serde_json::Value = serde_json::from_str(&room.body).expect("JSON");
        let at_other = room["relays"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["node"] == other).cloned())
            .unwrap_or_default();
        assert_eq!(at_other["from"][0]["node"], origin.as_str(), "{room}");
        assert_eq!(
            at_other["from"][0]["tracks"].as_array().map(Vec::len),
            Some(2),
            "{room}"
        );
    }
    drop(publisher);
}

// Meeting rooms through the store itself: two `RedisStore`s on one Redis stand for two
// control instances.

/// How long a condition may take to hold (generous: a loaded CI machine).
const DEADLINE: Duration = Duration::from_secs(10);

/// Await until `$cond` (which may `.await`) holds, or fail naming `$what`.
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if $cond {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} within {DEADLINE:?}",
                $what
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

fn store(redis: &Redis, instance: &str) -> RedisStore {
    RedisStore::open(&redis.url(), instance.to_string()).expect("a store")
}

fn entry(identity: &str, pid: &str) -> RosterEntry {
    RosterEntry {
        identity: identity.into(),
        pid: pid.into(),
        data: format!(r#"{{"identity":"{identity}","pid":"{pid}"}}"#),
    }
}

/// A connection of the test's own, to look at Redis from outside the stores.
async fn raw(redis: &Redis) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(redis.url()).ok()?;
    tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()
}

/// How many connections subscribe to `room`'s events (one per store listening), as Redis
/// counts them; 0 while Redis does not answer.
async fn subscribers(redis: &Redis, room: &str) -> usize {
    let Some(mut conn) = raw(redis).await else {
        return 0;
    };
    redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(room_channel(room))
        .query_async::<(String, usize)>(&mut conn)
        .await
        .map_or(0, |(_, n)| n)
}

async fn exists(redis: &Redis, key: &str) -> bool {
    let mut conn = raw(redis).await.expect("a connection to Redis");
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<usize>(&mut conn)
        .await
        .expect("EXISTS")
        == 1
}

async fn next_event(feed: &mut RoomFeed, what: &str) -> String {
    tokio::time::timeout(DEADLINE, feed.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no event within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_a_roster_and_its_max() {
    let redis = Redis::start();
    let (a, b) = (store(&redis, "a"), store(&redis, "b"));
    assert_eq!(
        a.roster_put("r", entry("alice ✓", "1"), 2).await,
        Ok(RosterJoin::Joined)
    );
    assert_eq!(
        b.roster_put("r", entry("bob", "2"), 2).await,
        Ok(RosterJoin::Joined)
    );
    // The room is full for a new identity, through either store.
    assert_eq!(
        b.roster_put("r", entry("carol", "3"), 2).await,
        Ok(RosterJoin::Full)
    );
    assert_eq!(
        a.roster_put("r", entry("carol", "3"), 2).await,
        Ok(RosterJoin::Full)
    );
    // The same identity may always join again, replacing its entry.
    assert_eq!(
        b.roster_put("r", entry("alice ✓", "4"), 2).await,
        Ok(RosterJoin::Joined)
    );
    let expected = vec![entry("alice ✓", "4"), entry("bob", "2")];
    assert_eq!(a.roster("r").await, Ok(expected.clone()));
    assert_eq!(b.roster("r").await, Ok(expected));
    assert_eq!(a.roster("elsewhere").await, Ok(vec![]));

    // Data reads back through the other store exactly as written.
    let data = r#"{"identity":"bob","tracks":["a/b","\"quoted\" \\ ✓"],"n":12345678901234567}"#;
    assert_eq!(b.roster_update("r", "bob", "2", data).await, Ok(true));
    let roster = a.roster("r").await.expect("roster");
    assert_eq!(roster[1].data, data);
    // No limit.
    assert_eq!(
        a.roster_put("r", entry("carol", "5"), 0).await,
        Ok(RosterJoin::Joined)
    );
    assert_eq!(b.roster("r").await.map(|r| r.len()), Ok(3));

    // The roster expires as a whole unless written to; emptied, it is gone at once.
    let mut conn = raw(&redis).await.expect("a connection to Redis");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(roster_key("r"))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(ttl > 0, "the roster has a TTL: {ttl}");
    assert_eq!(a.roster_remove("r", "alice ✓", "4").await, Ok(true));
    assert_eq!(a.roster_remove("r", "bob", "2").await, Ok(true));
    assert_eq!(b.roster_remove("r", "carol", "5").await, Ok(true));
    assert_eq!(b.roster_remove("r", "carol", "5").await, Ok(false));
    assert!(!exists(&redis, &roster_key("r")).await);
    assert_eq!(a.health().errors(), 0);
    assert_eq!(b.health().errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_chairs_a_room_until_its_lease_runs_out_and_room_values_are_shared() {
    let redis = Redis::start();
    let (a, b) = (store(&redis, "a"), store(&redis, "b"));
    let lease = Duration::from_millis(400);
    assert_eq!(a.chair_lease("r", "a-1", lease).await, Ok(true));
    assert_eq!(b.chair_lease("r", "b-1", lease).await, Ok(false));
    assert_eq!(a.chair_lease("r", "a-1", lease).await, Ok(true), "renewed");
    assert_eq!(b.chair_lease("other", "b-1", lease).await, Ok(true));
    // A holder that stops renewing loses the room once its lease runs out.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.chair_lease("r", "b-1", lease).await != Ok(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.chair_lease("r", "a-1", lease).await, Ok(false));
    // Only the holder gives it up.
    assert_eq!(a.chair_release("r", "a-1").await, Ok(()));
    assert_eq!(a.chair_lease("r", "a-1", lease).await, Ok(false));
    assert_eq!(b.chair_release("r", "b-1").await, Ok(()));
    assert_eq!(a.chair_lease("r", "a-1", lease).await, Ok(true));

    assert_eq!(b.room_value("r", "settings").await, Ok(None));
    a.set_room_value("r", "settings", Some(r#"{"ptt":true}"#))
        .await
        .expect("set");
    assert_eq!(
        b.room_value("r", "settings").await,
        Ok(Some(r#"{"ptt":true}"#.to_string()))
    );
    assert_eq!(b.room_value("r", "mode").await, Ok(None));
    b.set_room_value("r", "settings", None)
        .await
        .expect("reset");
    assert_eq!(a.room_value("r", "settings").await, Ok(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_join_can_neither_update_nor_remove_its_successor() {
    let redis = Redis::start();
    let (a, b) = (store(&redis, "a"), store(&redis, "b"));
    assert_eq!(
        a.roster_put("r", entry("alice", "old"), 0).await,
        Ok(RosterJoin::Joined)
    );
    // Alice joins again through the other instance.
    assert_eq!(
        b.roster_put("r", entry("alice", "new"), 0).await,
        Ok(RosterJoin::Joined)
    );
    assert_eq!(a.roster_update("r", "alice", "old", "{}").await, Ok(false));
    assert_eq!(a.roster_remove("r", "alice", "old").await, Ok(false));
    assert_eq!(a.roster("r").await, Ok(vec![entry("alice", "new")]));
    assert_eq!(
        b.roster_update("r", "alice", "new", r#"{"muted":true}"#)
            .await,
        Ok(true)
    );
    assert_eq!(
        a.roster("r").await.map(|r| r[0].data.clone()),
        Ok(r#"{"muted":true}"#.to_string())
    );
    assert_eq!(b.roster_update("r", "nobody", "new", "{}").await, Ok(false));
    assert_eq!(b.roster_remove("r", "alice", "new").await, Ok(true));
    assert_eq!(a.roster("r").await, Ok(vec![]));
    assert_eq!(b.roster_update("r", "alice", "new", "{}").await, Ok(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_lease_ran_out_leaves_the_roster_and_frees_its_place() {
    let redis = Redis::start();
    let (a, b) = (store(&redis, "a"), store(&redis, "b"));
    assert_eq!(
        a.roster_put("r", entry("alice", "1"), 1).await,
        Ok(RosterJoin::Joined)
    );
    assert_eq!(
        a.roster_put("s", entry("alice", "2"), 1).await,
        Ok(RosterJoin::Joined)
    );
    assert_eq!(
        b.roster_put("s", entry("bob", "3"), 1).await,
        Ok(RosterJoin::Full)
    );
    // A's last renewals lease the entries briefly, then A dies.
    a.set_roster_lease(Duration::from_millis(200));
    assert_eq!(a.roster_update("r", "alice", "1", "{}").await, Ok(true));
    assert_eq!(a.roster_update("s", "alice", "2", "{}").await, Ok(true));
    eventually!(
        "alice's expired entry leaves r's roster",
        b.roster("r").await.expect("roster").is_empty()
    );
    // Gone for its writer too: it can no longer renew it.
    assert_eq!(a.roster_update("r", "alice", "1", "{}").await, Ok(false));
    // In s, nobody read the roster: the join itself sees the lease ran out.
    eventually!(
        "bob joins s once alice's lease ran out",
        b.roster_put("s", entry("bob", "3"), 1).await == Ok(RosterJoin::Joined)
    );
    assert_eq!(b.roster("s").await, Ok(vec![entry("bob", "3")]));

    // A room whose every writer died goes away by itself, roster never read.
    assert_eq!(
        a.roster_put("abandoned", entry("alice", "4"), 0).await,
        Ok(RosterJoin::Joined)
    );
    eventually!(
        "the abandoned room's roster expires",
        !exists(&redis, &roster_key("abandoned")).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_reach_every_listener_of_the_room_on_every_instance() {
    let redis = Redis::start();
    let (a, b) = (store(&redis, "a"), store(&redis, "b"));
    let mut a1 = a.room_subscribe("r");
    let mut a2 = a.room_subscribe("r");
    let mut b1 = b.room_subscribe("r");
    let mut other = b.room_subscribe("s");
    // One subscription per instance and room, however many local listeners.
    eventually!(
        "A and B subscribe to r, B to s",
        subscribers(&redis, "r").await == 2 && subscribers(&redis, "s").await == 1
    );
    a.room_publish("r", "hello").await.expect("publish");
    assert_eq!(next_event(&mut a1, "A's first listener").await, "hello");
    assert_eq!(next_event(&mut a2, "A's second listener").await, "hello");
    assert_eq!(next_event(&mut b1, "B's listener").await, "hello");
    // Another room's listener hears its own room's events only.
    b.room_publish("s", "marker").await.expect("publish");
    assert_eq!(next_event(&mut other, "s's listener").await, "marker");
    assert!(other.try_recv().is_err());

    // A's listeners of r gone, A unsubscribes from r; B still hears it.
    drop((a1, a2));
    eventually!("A unsubscribes from r", subscribers(&redis, "r").await == 1);
    a.room_publish("r", "still").await.expect("publish");
    assert_eq!(next_event(&mut b1, "B's listener").await, "still");
    // And subscribes again for a new listener.
    let mut a3 = a.room_subscribe("r");
    eventually!(
        "A subscribes to r again",
        subscribers(&redis, "r").await == 2
    );
    b.room_publish("r", "again").await.expect("publish");
    assert_eq!(next_event(&mut a3, "A's new listener").await, "again");
    assert_eq!(next_event(&mut b1, "B's listener").await, "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_and_rosters_come_back_after_a_redis_restart() {
    let mut redis = Redis::start();
    let (a, b) = (store(&redis, "a"), store(&redis, "b"));
    let mut feed = a.room_subscribe("r");
    eventually!("A subscribes to r", subscribers(&redis, "r").await == 1);
    b.room_publish("r", "before").await.expect("publish");
    assert_eq!(next_event(&mut feed, "before the restart").await, "before");

    redis.stop();
    assert!(b.room_publish("r", "lost").await.is_err());
    redis.restart();
    eventually!(
        "A subscribes to r again by itself",
        subscribers(&redis, "r").await == 1
    );
    eventually!(
        "B publishes again",
        b.room_publish("r", "after").await.is_ok()
    );
    assert_eq!(next_event(&mut feed, "after the restart").await, "after");
    // Redis came back empty; rosters work again.
    eventually!(
        "A puts again",
        a.roster_put("r", entry("alice", "1"), 1).await == Ok(RosterJoin::Joined)
    );
    assert_eq!(b.roster("r").await, Ok(vec![entry("alice", "1")]));
}
