//! Process lifecycle: two dev nodes run side by side, SIGTERM/SIGINT stop the server
//! gracefully, invalid configuration stops start-up naming the key, the `token` subcommand, and
//! the DELETE contract. (Reaping is tested on simulated time in sfu-core/tests/engine.rs and,
//! through control's store, in reap.rs.)

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{
    CONNECT_TIMEOUT, Server, TempFile, candidate_ports, expect_media, run_control, wait_until,
};
use tools::PayloadKind::{Audio, Video};
use tools::token::{Grants, dev_token};
use tools::whip::Endpoint;
use tools::{Publisher, PublisherConfig, VideoConfig, sample_offer};

/// How long a `control` run that should fail at start-up may take.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn two_dev_nodes_run_side_by_side() {
    let first = Server::start();
    let second = Server::start();
    let first_ports = first.worker_ports();
    let second_ports = second.worker_ports();
    assert_eq!(first_ports.len(), 2, "first node's worker ports");
    assert_eq!(second_ports.len(), 2, "second node's worker ports");
    assert!(
        first_ports.is_disjoint(&second_ports),
        "two dev nodes share media ports: {first_ports:?} and {second_ports:?}"
    );
    for server in [&first, &second] {
        assert_eq!(
            server
                .client
                .get_text("/healthz")
                .expect("GET /healthz")
                .trim(),
            "ok"
        );
    }

    let publisher = second.publish("side", true, Some(VideoConfig::default()));
    let sub = second.subscribe("side");
    expect_media(&sub, Audio, "subscriber on the second node");
    expect_media(&sub, Video, "subscriber on the second node");
    let used: BTreeSet<u16> = candidate_ports(publisher.answer())
        .into_iter()
        .chain(candidate_ports(sub.answer()))
        .collect();
    assert!(
        used.is_subset(&second_ports),
        "the second node's answers name ports {used:?}, its workers listen on {second_ports:?}"
    );
    assert_eq!(
        first.metrics().sum("sfu_sessions"),
        0.0,
        "sessions leaked into the first node"
    );
    sub.close().expect("DELETE subscriber");
    publisher.close().expect("DELETE publisher");
}

/// SIGTERM (systemd, Kubernetes, `docker stop`) and SIGINT (Ctrl-C) stop the server the same
/// way: signaling stops, the media workers are joined, exit status 0, with live sessions.
#[test]
fn sigterm_and_sigint_stop_the_server_gracefully() {
    for signal in ["TERM", "INT"] {
        let mut server = Server::start();
        let publisher = server.publish("stop", true, Some(VideoConfig::default()));
        let sub = server.subscribe("stop");
        expect_media(&sub, Video, "subscriber before the signal");
        let status = server
            .signal_and_wait(signal, EXIT_DEADLINE)
            .unwrap_or_else(|| panic!("still running {EXIT_DEADLINE:?} after SIG{signal}"));
        let log = server.log_tail(40);
        assert!(status.success(), "exit after SIG{signal}: {status}\n{log}");
        assert!(
            log.contains("shutting down") && log.contains(&format!("SIG{signal}")),
            "no shutdown line naming SIG{signal}:\n{log}"
        );
        assert!(log.contains("stopped"), "no `stopped` line:\n{log}");
        drop((sub, publisher));
    }
}

/// Runs `control dev` with the config file `toml` and expects it to exit non-zero quickly,
/// saying `needle` on stderr.
fn assert_config_rejected(toml: &str, needle: &str) {
    let file = TempFile::with(".toml", toml);
    let run = run_control(
        &["dev", "--http", "127.0.0.1:0", "--config", file.path_str()],
        &[],
        EXIT_DEADLINE,
    );
    assert!(
        run.failed(),
        "control dev with {toml:?} should exit non-zero within {EXIT_DEADLINE:?}: {run:#?}"
    );
    assert!(
        run.stderr.contains(needle),
        "control dev with {toml:?}: stderr should name {needle:?}: {run:#?}"
    );
    assert!(
        !run.stdout.contains("SFU ready"),
        "control dev with {toml:?} reported ready: {run:#?}"
    );
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_key() {
    assert_config_rejected("[node]\nmedia_port_base = 0\n", "node.media_port_base");
    assert_config_rejected("[node]\nworkerz = 2\n", "workerz");

    let run = run_control(
        &["dev", "--http", "127.0.0.1:0"],
        &[("SFU__NODE__WORKERS", "lots")],
        EXIT_DEADLINE,
    );
    assert!(
        run.failed(),
        "SFU__NODE__WORKERS=lots should stop start-up with a non-zero status: {run:#?}"
    );
    assert!(
        run.stderr.contains("error") && !run.stdout.contains("SFU ready"),
        "SFU__NODE__WORKERS=lots: {run:#?}"
    );
}

/// README: "An invalid value stops start-up with an error naming the key", also for an
/// environment override.
#[test]
fn invalid_environment_value_names_the_key() {
    let run = run_control(
        &["dev", "--http", "127.0.0.1:0"],
        &[("SFU__NODE__WORKERS", "lots")],
        EXIT_DEADLINE,
    );
    assert!(run.failed(), "{run:#?}");
    assert!(
        run.stderr.contains("node.workers") || run.stderr.contains("SFU__NODE__WORKERS"),
        "the error should name node.workers or SFU__NODE__WORKERS: {}",
        run.stderr
    );
}

#[test]
fn token_subcommand_needs_a_key_and_mints_tokens_the_server_accepts() {
    let run = run_control(
        &["token", "--room", "r", "--identity", "i"],
        &[],
        EXIT_DEADLINE,
    );
    assert!(run.failed(), "token without --dev or keys: {run:#?}");
    assert!(
        run.stderr.contains("--dev") && run.stderr.contains("--api-key"),
        "token without --dev or keys should say what to give: {run:#?}"
    );
    assert!(
        run.stdout.trim().is_empty(),
        "no token on failure: {run:#?}"
    );

    let run = run_control(
        &[
            "token",
            "--dev",
            "--room",
            "cli-token",
            "--identity",
            "cli",
            "--publish",
        ],
        &[],
        EXIT_DEADLINE,
    );
    assert!(run.succeeded(), "token --dev --publish: {run:#?}");
    let token = run.stdout.trim().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    assert!(
        parts.len() == 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }),
        "token --dev should print one JWT (three base64url parts): {token:?}"
    );

    let server = Server::start();
    let config = PublisherConfig::new(&server.base_url, "cli-token", &token)
        .video(Some(VideoConfig::default()));
    let publisher =
        Publisher::connect(config).unwrap_or_else(|e| panic!("WHIP with the CLI token: {e}"));
    assert!(
        publisher.wait_connected(CONNECT_TIMEOUT),
        "publisher with the CLI token did not connect: {:?}",
        publisher.state().error()
    );
    publisher.close().expect("DELETE with the CLI token");
}

#[test]
fn delete_checks_kind_room_and_existence() {
    let server = Server::start();
    let token = dev_token("r", "alice", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let offer = |endpoint| {
        let sdp = sample_offer(endpoint).expect("sample offer");
        server
            .client
            .offer(endpoint, "r", &token, &sdp)
            .unwrap_or_else(|e| panic!("{endpoint:?} offer: {e}"))
            .location
    };
    let whep = offer(Endpoint::Whep);
    assert!(whep.contains("/whep/r/"), "WHEP Location: {whep}");
    let session_count = || server.metrics().sum("sfu_sessions");
    assert_eq!(session_count(), 1.0);

    // A WHEP session is not a WHIP resource.
    let via_whip = whep.replacen("/whep/", "/whip/", 1);
    let r = server.delete(&via_whip, &token);
    assert_eq!(r.status, 404, "DELETE {via_whip} (a WHEP session): {r:?}");

    // A token for another room may not end this room's sessions ...
    let elsewhere = dev_token("elsewhere", "mallory", Grants::PUBLISH_SUBSCRIBE).expect("token");
    let r = server.delete(&whep, &elsewhere);
    assert_eq!(
        r.status, 403,
        "DELETE {whep} with a token for another room: {r:?}"
    );
    // ... nor reach them through its own room's path.
    let other_room = whep.replacen("/whep/r/", "/whep/elsewhere/", 1);
    let r = server.delete(&other_room, &elsewhere);
    assert_eq!(
        r.status, 404,
        "DELETE {other_room} (session is in room r): {r:?}"
    );
    assert_eq!(
        session_count(),
        1.0,
        "a refused DELETE ended the session anyway"
    );

    let r = server.delete(&whep, &token);
    assert_eq!(r.status, 200, "DELETE {whep}: {r:?}");
    assert!(
        wait_until(Duration::from_secs(1), || session_count() == 0.0),
        "DELETE answered 200 but the session lives"
    );
    let r = server.delete(&whep, &token);
    assert_eq!(r.status, 404, "second DELETE {whep}: {r:?}");

    // The same for a WHIP session, through the WHEP path.
    let whip = offer(Endpoint::Whip);
    let via_whep = whip.replacen("/whip/", "/whep/", 1);
    let r = server.delete(&via_whep, &token);
    assert_eq!(r.status, 404, "DELETE {via_whep} (a WHIP session): {r:?}");
    let r = server.delete(&whip, &token);
    assert_eq!(r.status, 200, "DELETE {whip}: {r:?}");
    let r = server.delete(&whip, &token);
    assert_eq!(r.status, 404, "second DELETE {whip}: {r:?}");
}
