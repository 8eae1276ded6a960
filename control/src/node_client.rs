//! How control reaches a media node: only through the node API of `sfu_proto` — requests
//! answered by responses, and a stream of events. [`InProcessNode`] serves it with a node
//! running inside this process (the embedded default); a client for a node on another machine
//! implements the same trait and carries the same messages.

use std::future::Future;
use std::pin::Pin;

use sfu_core::ids::NodeId;
use sfu_core::proto::{NodeEvent, NodeHealth, NodeRequest, NodeResponse, NodeStats};
use tokio::sync::mpsc;

/// A boxed future, so that `dyn NodeClient` works.
pub type Call<'a> = Pin<Box<dyn Future<Output = NodeResponse> + Send + 'a>>;

/// A media node as control sees it.
pub trait NodeClient: Send + Sync + std::fmt::Debug {
    /// The node's name.
    fn id(&self) -> &NodeId;

    /// Send one request and wait for its response. Transport failures come back as
    /// `NodeResponse::Error(NodeError::Stopped)`.
    fn call(&self, request: NodeRequest) -> Call<'_>;

    /// The node's event stream; the first caller takes it.
    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<NodeEvent>>;

    /// Drop the link to the node (control declared it dead while its link lingered): the
    /// node notices, reconnects and registers again as a new incarnation. Nothing to do for
    /// a node in this process.
    fn disconnect(&self, _reason: &str) {}

    /// For a node whose link another control instance holds: ask that instance to drain
    /// (`true`) or undrain it, since only it runs the node's health machine. `None` for the
    /// nodes this instance drives.
    fn drain_through_holder(&self, _drain: bool) -> Option<Call<'_>> {
        None
    }
}

/// The node's counters, through the API.
pub async fn stats(node: &dyn NodeClient) -> Option<NodeStats> {
    match node.call(NodeRequest::Stats).await {
        NodeResponse::Stats(stats) => Some(stats),
        _ => None,
    }
}

/// Whether the node's workers run, through the API. A node that does not answer counts as
/// down: no worker of it is known to run.
pub async fn health(node: &dyn NodeClient) -> NodeHealth {
    match node.call(NodeRequest::Health).await {
        NodeResponse::Health(health) => health,
        _ => NodeHealth {
            node: Some(node.id().clone()),
            workers_up: vec![false],
        },
    }
}

/// A node running in this process.
#[derive(Debug)]
pub struct InProcessNode {
    id: NodeId,
    node: sfu_core::Node,
}

impl InProcessNode {
    pub fn new(id: NodeId, node: sfu_core::Node) -> Self {
        Self { id, node }
    }

    /// UDP port of each worker.
    pub fn ports(&self) -> Vec<u16> {
        self.node.ports()
    }
}

impl NodeClient for InProcessNode {
    fn id(&self) -> &NodeId {
        &self.id
    }

    fn call(&self, request: NodeRequest) -> Call<'_> {
        Box::pin(async move {
            let mut response = self.node.handle(request).await;
            if let NodeResponse::Health(health) = &mut response {
                health.node = Some(self.id.clone());
            }
            response
        })
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<NodeEvent>> {
        self.node.take_events()
    }
}
