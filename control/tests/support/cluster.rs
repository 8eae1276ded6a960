//! Cluster pieces for the tests: a media node in the test process that joins control over
//! QUIC like `sfu run`, and a temporary directory for control's certificate files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use sfu_core::ids::SessionId;
use sfu_core::uplink::{self, UplinkConfig};
use sfu_core::{Node, NodeConfig};
use tokio::sync::watch;

/// A media node in this process, joined to control like `sfu run`.
pub struct TestNode {
    pub node: Arc<Node>,
    /// Its workers' UDP ports (what its answers' candidates name).
    pub ports: BTreeSet<u16>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl TestNode {
    /// Start node `id` and its uplink to `control` (`HOST:PORT`), trusting `cert`.
    pub fn start(id: &str, control: &str, cert: &Path, secret: &str) -> TestNode {
        Self::start_with(id, control, cert, secret, |_| {})
    }

    /// [`TestNode::start`] with `configure` applied to the node's configuration.
    pub fn start_with(
        id: &str,
        control: &str,
        cert: &Path,
        secret: &str,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> TestNode {
        let mut config = NodeConfig {
            id: id.parse().expect("node id"),
            workers: 1,
            media_port_base: 53000,
            media_port_scan: true,
            pin_workers: false,
            relay_port: Some(0),
            ..NodeConfig::default()
        };
        configure(&mut config);
        let node = Arc::new(Node::start(config).expect("node starts"));
        let ports = node.ports().into_iter().collect();
        let events = node.take_events().expect("events");
        let uplink = UplinkConfig {
            control: control.to_string(),
            secret: secret.to_string(),
            control_cert: cert.to_path_buf(),
            region: None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let running = node.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                uplink::run(running, uplink, events, stop_rx)
                    .await
                    .expect("uplink runs");
            });
        });
        TestNode {
            node,
            ports,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether the node holds `session`.
    pub fn holds(&self, session: SessionId) -> bool {
        self.node
            .held_sessions()
            .iter()
            .any(|h| h.session == session)
    }
}

impl Drop for TestNode {
    /// Stops the link and the node at once, without telling control (as a crash would).
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "control-cluster-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
