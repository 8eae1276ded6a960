//! Rooms that span nodes (docs/cascade.md): when a session of a room lands on a node while the
//! room has sessions on others, every pair of those nodes relays the room both ways. Each node
//! sends only the tracks of its own sessions, so a full mesh among a room's nodes delivers
//! every publisher to every node in one hop, with no loops.
//!
//! For each direction control first tells the origin to expect the relay node (with a token
//! minted once per pair), then tells the relay node to relay the room from the origin (its
//! relay address, certificate and the token). Both requests are idempotent: they are sent
//! again for every new session of a room on several nodes, which also re-establishes a relay
//! a node dropped when it idled.

use sfu_core::ids::{NodeId, RoomId};
use sfu_core::proto::{NodeRequest, NodeResponse, RelayRoom};

use super::NodeState;
use super::nodes::Nodes;

/// Make the room's nodes relay it to and from `node`, which is about to get a session of it;
/// `room_nodes` are the nodes holding its sessions now; a relay is left after `idle_secs`
/// without subscribers (`cascade.idle_secs`). Returns how many directions are set up (a node
/// without a relay endpoint, or one not answering, is skipped and logged).
pub async fn connect(
    nodes: &Nodes,
    room: &RoomId,
    node: &NodeId,
    room_nodes: &[NodeId],
    idle_secs: u32,
) -> usize {
    let mut connected = 0;
    for other in room_nodes.iter().filter(|n| *n != node) {
        if !matches!(
            nodes.state(other),
            Some(NodeState::Up | NodeState::Draining)
        ) {
            continue;
        }
        for (relay, origin) in [(node, other), (other, node)] {
            match relay_direction(nodes, room, relay, origin, idle_secs).await {
                Ok(()) => connected += 1,
                Err(reason) => {
                    tracing::warn!(%room, %relay, %origin, %reason, "room not relayed between nodes")
                }
            }
        }
    }
    connected
}

/// Have `relay` relay `room` from `origin`.
async fn relay_direction(
    nodes: &Nodes,
    room: &RoomId,
    relay: &NodeId,
    origin: &NodeId,
    idle_secs: u32,
) -> Result<(), String> {
    let address = nodes
        .relay_address(origin)
        .ok_or_else(|| format!("{origin} registered no relay endpoint (node.relay_port)"))?;
    let (Some(origin_client), Some(relay_client)) = (nodes.client(origin), nodes.client(relay))
    else {
        return Err("node gone".into());
    };
    let token = nodes.link_token(relay, origin);
    let expect = NodeRequest::ExpectRelay {
        peer: relay.clone(),
        token,
    };
    match origin_client.call(expect).await {
        NodeResponse::Done => {}
        other => return Err(format!("{origin} answered {other:?}")),
    }
    let request = NodeRequest::RelayRoom(RelayRoom {
        room: room.clone(),
        origin: origin.clone(),
        addr: address.addr,
        cert: address.cert,
        token,
        idle_secs,
    });
    match relay_client.call(request).await {
        NodeResponse::Done => Ok(()),
        other => Err(format!("{relay} answered {other:?}")),
    }
}
