//! What a video subscriber's session holds on the heap, for a heap profiler: one node of one
//! worker on the deterministic test kit (simulated time, no sockets), one video publisher and
//! N video subscribers, connected and then forwarded to for a few simulated seconds.
//!
//! ```sh
//! cargo build --release -p sfu-core --example session_memory
//! heaptrack -o /tmp/session-memory target/release/examples/session_memory 200
//! heaptrack_print -f /tmp/session-memory.zst | less
//! ```
//!
//! The subscribers' own str0m peers live in the same process: allocations under
//! `testkit::peer` are theirs, the rest the node's. bench/RESULTS.md has a breakdown.

// A tool run by hand; its only clock readings are the kit's.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use sfu_core::proto::SubscribePolicy;
use sfu_core::testkit::Kit;
use sfu_core::testkit::net::NetConfig;
use sfu_core::testkit::peer::{PublishMedia, SubscribeMedia};

/// Simulated time forwarded after every subscriber receives video: long enough for the
/// resend caches and the estimators' histories to fill to their steady size.
const STEADY: Duration = Duration::from_secs(15);

fn main() {
    let subscribers: usize = match std::env::args().nth(1).map(|s| s.parse()) {
        None => 200,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: session_memory [SUBSCRIBERS (default 200)]");
            std::process::exit(2);
        }
    };
    let mut kit = Kit::new(&[1], NetConfig::default());
    let video = PublishMedia {
        audio: false,
        video_layers: 1,
    };
    kit.publish(0, 0, "memory", "publisher", video)
        .expect("publish");
    let subs: Vec<_> = (0..subscribers)
        .map(|i| {
            let media = SubscribeMedia {
                audio: false,
                video_slots: 1,
            };
            kit.subscribe(
                0,
                0,
                "memory",
                &format!("s{i}"),
                media,
                SubscribePolicy::default(),
            )
            .expect("subscribe")
        })
        .collect();
    let receiving = kit.run_until(Duration::from_secs(30), |kit| {
        subs.iter().all(|&s| !kit.peer(s).received_on(0).is_empty())
    });
    assert!(receiving, "every subscriber receives video");
    kit.run_for(STEADY);
    let packets: usize = subs.iter().map(|&s| kit.peer(s).received_on(0).len()).sum();
    eprintln!("{subscribers} subscribers received {packets} video packets");
}
