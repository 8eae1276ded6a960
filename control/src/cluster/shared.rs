//! Several control instances as one, through the shared store: each announces the nodes whose
//! links it holds (refreshed well within their TTL), learns the others' nodes, and reaches a
//! node held elsewhere by forwarding its requests to the holding instance
//! ([`ForwardedNode`]). An unreachable store changes nothing here: the nodes already known
//! stay, so media and placement on them go on.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sfu_core::ids::NodeId;
use sfu_core::proto::{NodeError, NodeEvent, NodeRequest, NodeResponse};
use tokio::sync::mpsc;

use super::nodes::Nodes;
use crate::node_client::{Call, NodeClient};
use crate::store::redis::{ForwardHandler, Forwarded, RedisStore};

/// A node whose link another control instance holds.
#[derive(Debug)]
pub struct ForwardedNode {
    id: NodeId,
    holder: String,
    store: RedisStore,
    timeout: Duration,
}

impl NodeClient for ForwardedNode {
    fn id(&self) -> &NodeId {
        &self.id
    }

    fn call(&self, request: NodeRequest) -> Call<'_> {
        Box::pin(self.store.forward(
            &self.holder,
            &self.id,
            Forwarded::Node(request),
            self.timeout,
        ))
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<NodeEvent>> {
        // The holding instance applies the node's events to the shared store.
        None
    }

    fn drain_through_holder(&self, drain: bool) -> Option<Call<'_>> {
        Some(Box::pin(self.store.forward(
            &self.holder,
            &self.id,
            Forwarded::SetDraining(drain),
            self.timeout,
        )))
    }
}

/// Answers requests other instances forward to the nodes held here.
pub fn forward_handler(nodes: Weak<Nodes>) -> ForwardHandler {
    Arc::new(move |node, request| {
        let nodes = nodes.clone();
        Box::pin(async move {
            let Some(nodes) = nodes.upgrade() else {
                return NodeResponse::Error(NodeError::Stopped);
            };
            match request {
                Forwarded::Node(request) => match nodes.local_client(&node) {
                    Some(client) => client.call(request).await,
                    None => NodeResponse::Error(NodeError::Stopped),
                },
                Forwarded::SetDraining(drain) => {
                    let now = std::time::Instant::now();
                    let changes = if drain {
                        nodes.drain(&node, now)
                    } else {
                        nodes.undrain(&node, now)
                    };
                    match changes {
                        Some(changes) => {
                            super::link::log_changes(&changes);
                            tracing::info!(%node, drain, "node drain changed through another control instance");
                            NodeResponse::Done
                        }
                        None => NodeResponse::Error(NodeError::Stopped),
                    }
                }
            }
        })
    })
}

/// Keep the registry and this instance's view of it in step, every `ttl / 3`, until `nodes`
/// is dropped.
pub async fn sync_registry(
    store: RedisStore,
    nodes: Weak<Nodes>,
    ttl: Duration,
    forward_timeout: Duration,
) {
    let mut interval = tokio::time::interval(ttl / 3);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        interval.tick().await;
        let Some(nodes) = nodes.upgrade() else { return };
        let me = store.instance().to_string();
        let synced = async {
            store.publish_nodes(&nodes.local_entries(&me), ttl).await?;
            store.registry().await
        }
        .await;
        match synced {
            Ok(entries) => {
                nodes.sync_shared(&entries, &me, |entry| {
                    Arc::new(ForwardedNode {
                        id: entry.node.clone(),
                        holder: entry.holder.clone(),
                        store: store.clone(),
                        timeout: forward_timeout,
                    })
                });
                if !was_up {
                    tracing::info!("the state store answers again");
                }
                was_up = true;
            }
            Err(e) => {
                // Keep every node as it is: a store outage is not a node outage.
                if was_up {
                    tracing::warn!(error = %e, "state store unreachable; nodes and media continue, new sessions are refused");
                }
                was_up = false;
            }
        }
    }
}
