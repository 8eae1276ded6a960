//! Control's end of the node links: a QUIC endpoint that accepts nodes, checks their secret
//! and registration ([`sfu_link::handshake`]), then carries the node API — requests from
//! [`RemoteNode::call`], responses matched by id, and the node's events, which go to control's
//! event handler with the node's id. A node's load event is its heartbeat.

use std::sync::Arc;
use std::time::Instant;

use sfu_core::ids::NodeId;
use sfu_core::proto::{Frame, HeldSession, NodeEvent, NodeRequest};
use sfu_link::handshake::{self, Established};
use sfu_link::requests::{Requests, spawn_writer};
use sfu_link::{LinkError, quinn};
use tokio::sync::mpsc;

use super::Incarnation;
use super::nodes::Nodes;
use crate::node_client::{Call, NodeClient};

/// What a node's link tells the rest of control.
#[derive(Debug)]
pub enum FromNode {
    /// The node registered; it holds these sessions.
    Registered {
        incarnation: Incarnation,
        held: Vec<HeldSession>,
    },
    Event(NodeEvent),
}

/// Sends what links hear, with the node's id.
pub type NodeMessages = mpsc::UnboundedSender<(NodeId, FromNode)>;

/// A node on another host, reached over its link.
#[derive(Debug)]
pub struct RemoteNode {
    id: NodeId,
    requests: Requests,
    connection: quinn::Connection,
}

impl NodeClient for RemoteNode {
    fn id(&self) -> &NodeId {
        &self.id
    }

    fn call(&self, request: NodeRequest) -> Call<'_> {
        Box::pin(self.requests.call(request))
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<NodeEvent>> {
        // A remote node's events arrive through `NodeMessages`.
        None
    }

    fn disconnect(&self, reason: &str) {
        self.connection.close(2u32.into(), reason.as_bytes());
    }
}

/// Accept node links on `endpoint` until it closes.
pub async fn serve(
    endpoint: quinn::Endpoint,
    secret: Arc<String>,
    nodes: Arc<Nodes>,
    messages: NodeMessages,
) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let (secret, nodes, messages) = (secret.clone(), nodes.clone(), messages.clone());
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => {
                    if let Err(e) = run_link(connection, &secret, &nodes, &messages).await {
                        tracing::warn!(%remote, error = %e, "node link refused or failed");
                    }
                }
                Err(e) => tracing::warn!(%remote, error = %e, "node connection failed"),
            }
        });
    }
}

async fn run_link(
    connection: quinn::Connection,
    secret: &str,
    nodes: &Arc<Nodes>,
    messages: &NodeMessages,
) -> Result<(), LinkError> {
    let (
        registration,
        Established {
            sender,
            mut receiver,
        },
    ) = handshake::accept(&connection, secret.as_bytes(), |r| nodes.admit(&r.node)).await?;
    let node = registration.node.clone();
    let (outbox, mut writer) = spawn_writer(sender);
    let remote = Arc::new(RemoteNode {
        id: node.clone(),
        requests: Requests::new(outbox),
        connection: connection.clone(),
    });
    let (incarnation, changes) = nodes.register(&registration, remote.clone(), Instant::now());
    log_changes(&changes);
    tracing::info!(
        %node,
        incarnation = incarnation.0,
        region = registration.region.as_deref().unwrap_or("-"),
        media_ip = %registration.media_ip,
        ports = ?registration.media_ports,
        held = registration.sessions.len(),
        remote = %connection.remote_address(),
        "node registered"
    );
    let _ = messages.send((
        node.clone(),
        FromNode::Registered {
            incarnation,
            held: registration.sessions,
        },
    ));
    let error = loop {
        let frame = tokio::select! {
            frame = receiver.next() => frame,
            written = &mut writer => break written.unwrap_or(LinkError::Closed),
        };
        match frame {
            Ok(Frame::Response { id, response }) => {
                remote.requests.answer(id, response);
            }
            Ok(Frame::Event(event)) => {
                let load = match &event {
                    NodeEvent::Load(load) => Some(load.clone()),
                    _ => None,
                };
                let rtt = connection.rtt();
                log_changes(&nodes.heartbeat(&node, incarnation, load, rtt, Instant::now()));
                let _ = messages.send((node.clone(), FromNode::Event(event)));
            }
            Ok(_) => {
                // Handshake frames after the handshake: a confused peer. Close this link only.
                break LinkError::Protocol("handshake frame after registration".into());
            }
            Err(e) => break e,
        }
    };
    remote.requests.fail_all();
    nodes.link_lost(&node, incarnation);
    writer.abort();
    connection.close(1u32.into(), b"link closed");
    tracing::warn!(%node, incarnation = incarnation.0, error = %error, "node link lost");
    Ok(())
}

/// Log health changes the way operators read them.
pub fn log_changes(changes: &[super::HealthEvent]) {
    for change in changes {
        match change {
            super::HealthEvent::Changed {
                node,
                incarnation,
                from,
                to,
                cause,
            } => tracing::warn!(
                %node,
                incarnation = incarnation.0,
                from = from.as_str(),
                to = to.as_str(),
                cause = ?cause,
                "node state changed"
            ),
            super::HealthEvent::DrainExpired { node, incarnation } => tracing::warn!(
                %node,
                incarnation = incarnation.0,
                "drain timeout reached; ending the node's remaining sessions"
            ),
        }
    }
}
