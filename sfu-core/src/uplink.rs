//! A node's link up to control (`sfu run`): connect over QUIC, prove the cluster secret,
//! register, then serve control's node API requests and send the node's events (its load
//! report every second is the heartbeat). When the link is lost the node keeps forwarding
//! the sessions it has, reconnects with backoff and registers again with what it still
//! holds, so control can reconcile.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sfu_link::handshake::{self, Established};
use sfu_link::requests::spawn_writer;
use sfu_link::{LinkError, quinn, tls};
use sfu_proto::{Frame, NodeEvent, Registration};
use tokio::sync::{mpsc, watch};

use crate::Node;

/// First wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where control is and how to prove membership (`[cluster]` on the node).
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Control's cluster address, `HOST:PORT`.
    pub control: String,
    /// The cluster secret (never sent; see `sfu_link::auth`).
    pub secret: String,
    /// Control's certificate (PEM): the only one this node accepts.
    pub control_cert: PathBuf,
    pub region: Option<String>,
}

/// Why the uplink cannot run at all (a lost link is not an error: it reconnects).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("cluster.control_cert: {0}")]
    Certificate(#[from] tls::TlsError),
    #[error("cannot open a QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("cluster.secret must be at least {min} bytes")]
    WeakSecret { min: usize },
}

/// Run the uplink until `stop` turns true. `events` is the node's event stream.
pub async fn run(
    node: Arc<Node>,
    config: UplinkConfig,
    mut events: mpsc::UnboundedReceiver<NodeEvent>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), UplinkError> {
    if config.secret.len() < sfu_link::auth::MIN_SECRET_LEN {
        return Err(UplinkError::WeakSecret {
            min: sfu_link::auth::MIN_SECRET_LEN,
        });
    }
    let client_config = tls::client_config(tls::read_certificate(&config.control_cert)?)?;
    let incarnation: u64 = rand::random();

    // Events go to the current link's outbox; with no link they are dropped (the next
    // registration carries the sessions the node holds then).
    let outbox: Arc<Mutex<Option<mpsc::Sender<Frame>>>> = Arc::new(Mutex::new(None));
    let events_task = tokio::spawn({
        let outbox = outbox.clone();
        async move {
            while let Some(event) = events.recv().await {
                let current = outbox.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(tx) = current {
                    let _ = tx.send(Frame::Event(event)).await;
                }
            }
        }
    });

    let mut backoff = MIN_BACKOFF;
    let mut attempt: u64 = 0;
    while !*stop.borrow() {
        attempt += 1;
        let outcome = tokio::select! {
            outcome = connect_and_serve(&node, &config, &client_config, incarnation, &outbox) => outcome,
            _ = stop.changed() => break,
        };
        *outbox.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match outcome {
            Served::Registered(e) => {
                tracing::warn!(control = %config.control, error = %e, "link to control lost; reconnecting");
                backoff = MIN_BACKOFF;
            }
            Served::NotRegistered(LinkError::Refused(reason)) => {
                tracing::error!(control = %config.control, %reason, "control refused this node");
            }
            Served::NotRegistered(e) => {
                // Log the first failures, then every tenth: control may be down for a while.
                if attempt <= 3 || attempt % 10 == 0 {
                    tracing::warn!(control = %config.control, attempt, error = %e, "cannot reach control; retrying");
                }
            }
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 100);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    events_task.abort();
    Ok(())
}

enum Served {
    /// The link came up and later failed.
    Registered(LinkError),
    /// The link never came up.
    NotRegistered(LinkError),
}

async fn connect_and_serve(
    node: &Arc<Node>,
    config: &UplinkConfig,
    client_config: &quinn::ClientConfig,
    incarnation: u64,
    outbox: &Mutex<Option<mpsc::Sender<Frame>>>,
) -> Served {
    let connection = match connect(config, client_config).await {
        Ok(c) => c,
        Err(e) => return Served::NotRegistered(e),
    };
    let registration = Registration {
        node: node.id().clone(),
        incarnation,
        region: config.region.clone(),
        media_ip: node.advertise_ip(),
        media_ports: node.ports(),
        capacity: node.capacity(),
        sessions: node.held_sessions(),
        relay: node.relay_address(),
    };
    let held = registration.sessions.len();
    let secret = config.secret.as_bytes();
    let Established {
        sender,
        mut receiver,
    } = match handshake::register(&connection, secret, registration).await {
        Ok(established) => established,
        Err(e) => return Served::NotRegistered(e),
    };
    tracing::info!(control = %config.control, held, "registered with control");
    let (tx, mut writer) = spawn_writer(sender);
    *outbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
    if node.is_draining() {
        // Control may not have heard it before the link was lost (or may be a new instance).
        let _ = tx.send(Frame::Event(NodeEvent::Draining)).await;
    }

    let error = loop {
        let frame = tokio::select! {
            frame = receiver.next() => frame,
            // The writer ends only when writing failed.
            written = &mut writer => break written.unwrap_or(LinkError::Closed),
        };
        match frame {
            Ok(Frame::Request { id, request }) => {
                let node = node.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let response = node.handle(request).await;
                    let _ = tx.send(Frame::Response { id, response }).await;
                });
            }
            Ok(other) => {
                tracing::warn!(frame = ?std::mem::discriminant(&other), "unexpected frame from control ignored");
            }
            Err(e) => break e,
        }
    };
    writer.abort();
    connection.close(0u32.into(), b"link reset");
    Served::Registered(error)
}

async fn connect(
    config: &UplinkConfig,
    client_config: &quinn::ClientConfig,
) -> Result<quinn::Connection, LinkError> {
    let addr: SocketAddr = tokio::net::lookup_host(&config.control)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| LinkError::Protocol(format!("cannot resolve {}", config.control)))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| LinkError::Protocol(format!("cannot open a QUIC endpoint: {e}")))?;
    endpoint.set_default_client_config(client_config.clone());
    Ok(endpoint.connect(addr, tls::SERVER_NAME)?.await?)
}
