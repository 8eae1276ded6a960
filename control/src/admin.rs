//! The admin API (`/api/nodes`, `/api/rooms`): what the cluster holds, and draining nodes and
//! ending rooms. Every call needs an admin token for every room (`control token --admin`
//! without `--room`); docs/http-api.md describes each.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sfu_core::ids::{NodeId, RoomId, SessionId};
use sfu_core::proto::{NodeRequest, NodeResponse, TrackInfo};

use crate::auth;
use crate::cluster::link::log_changes;
use crate::cluster::nodes::ForgetError;
use crate::http::{AppState, bearer, store_unavailable, text};
use crate::rtc::participant::RoomEvent;
use crate::rtc::settings::{self, RoomSettings};
use crate::store::SessionRecord;

/// A room as the admin API shows it.
#[derive(Debug, Serialize)]
struct RoomView {
    room: String,
    nodes: Vec<String>,
}

/// One room with its sessions and tracks.
#[derive(Debug, Serialize)]
struct RoomDetail {
    room: String,
    nodes: Vec<String>,
    sessions: Vec<SessionView>,
    tracks: Vec<TrackView>,
    /// What each of the room's nodes relays of it, as the nodes answer now.
    relays: Vec<RelayView>,
}

/// What one node relays of a room.
#[derive(Debug, Serialize)]
struct RelayView {
    node: String,
    /// Tracks it receives, per origin node; `None` when the node did not answer.
    from: Option<Vec<RelayedFromView>>,
    /// Nodes it sends its own tracks of the room to.
    to: Vec<String>,
}

#[derive(Debug, Serialize)]
struct RelayedFromView {
    node: String,
    tracks: Vec<String>,
}

#[derive(Debug, Serialize)]
struct SessionView {
    session: String,
    kind: &'static str,
    identity: String,
    node: String,
}

#[derive(Debug, Serialize)]
struct TrackView {
    track: String,
    identity: String,
    kind: &'static str,
    layers: u8,
    /// Nodes that receive the track over a relay link.
    relayed_to: Vec<String>,
}

/// The caller's token if it is an admin token for every room; the response otherwise.
#[allow(clippy::result_large_err)] // the error is the response, sent as it is
fn admin(state: &AppState, headers: &HeaderMap) -> Result<auth::Claims, Response> {
    let claims = bearer(state, headers)?;
    if !auth::is_cluster_admin(&claims) {
        return Err(text(
            StatusCode::FORBIDDEN,
            "the admin API needs an admin token for every room (control token --admin, without --room)",
        ));
    }
    Ok(claims)
}

/// The caller's token if it is an admin token for `room` or for every room and the room's
/// name is valid; the response otherwise.
#[allow(clippy::result_large_err)] // the error is the response, sent as it is
fn room_admin(state: &AppState, headers: &HeaderMap, room: &str) -> Result<auth::Claims, Response> {
    let claims = bearer(state, headers)?;
    if !(auth::is_cluster_admin(&claims) || (claims.grants.admin && claims.room == room)) {
        return Err(text(
            StatusCode::FORBIDDEN,
            format!("this needs an admin token for room {room:?} or for every room"),
        ));
    }
    if room.parse::<RoomId>().is_err() {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "room names are 1-128 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(claims)
}

/// `GET /api/rooms/{room}/settings`
pub async fn room_settings(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = room_admin(&state, &headers, &room) {
        return r;
    }
    match settings::load(&state, &room).await {
        Ok(settings) => Json(settings).into_response(),
        Err(e) => store_unavailable(e),
    }
}

/// `PUT /api/rooms/{room}/settings`: the room's options from now on (a room need not exist
/// yet).
pub async fn put_room_settings(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let claims = match room_admin(&state, &headers, &room) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match RoomSettings::parse(&body, &state.hybrid) {
        Ok(settings) => store_settings(&state, &room, &claims, Some(settings)).await,
        Err(e) => text(StatusCode::BAD_REQUEST, e),
    }
}

/// `DELETE /api/rooms/{room}/settings`: back to the defaults.
pub async fn delete_room_settings(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    match room_admin(&state, &headers, &room) {
        Ok(claims) => store_settings(&state, &room, &claims, None).await,
        Err(r) => r,
    }
}

/// Keep `settings` as the room's (`None`: forget them), and answer with what now applies.
async fn store_settings(
    state: &AppState,
    room: &str,
    claims: &auth::Claims,
    settings: Option<RoomSettings>,
) -> Response {
    let json = settings
        .as_ref()
        .map(|s| serde_json::to_string(s).unwrap_or_default());
    if let Err(e) = state
        .sessions
        .set_room_value(room, settings::SETTINGS, json.as_deref())
        .await
    {
        return store_unavailable(e);
    }
    // The room's chair tasks read them again now (otherwise within a while).
    let event = serde_json::to_string(&RoomEvent::Settings).unwrap_or_default();
    if let Err(e) = state.sessions.room_publish(room, &event).await {
        tracing::warn!(%room, error = %e, "cannot announce the room's new settings");
    }
    match &json {
        Some(json) => {
            tracing::info!(%room, settings = %json, admin = %claims.sub, "room settings changed")
        }
        None => tracing::info!(%room, admin = %claims.sub, "room settings back to the defaults"),
    }
    Json(settings.unwrap_or_default()).into_response()
}

/// `GET /api/nodes`
pub async fn nodes(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&state, &headers) {
        return r;
    }
    let (counts, rooms) = match (
        state.sessions.node_counts().await,
        state.sessions.rooms().await,
    ) {
        (Ok(counts), Ok(rooms)) => (counts, rooms),
        (Err(e), _) | (_, Err(e)) => return store_unavailable(e),
    };
    Json(state.nodes.views(&counts, &rooms)).into_response()
}

/// `GET /api/rooms`
pub async fn rooms(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&state, &headers) {
        return r;
    }
    let rooms = match state.sessions.rooms().await {
        Ok(rooms) => rooms,
        Err(e) => return store_unavailable(e),
    };
    let rooms: Vec<RoomView> = rooms
        .into_iter()
        .map(|(room, nodes)| RoomView {
            room,
            nodes: nodes.iter().map(ToString::to_string).collect(),
        })
        .collect();
    Json(rooms).into_response()
}

/// `GET /api/rooms/{room}` (an admin token for the room suffices)
pub async fn room(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = room_admin(&state, &headers, &room) {
        return r;
    }
    let (sessions, tracks) = match room_sessions(&state, &room).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let mut node_ids: Vec<NodeId> = sessions.iter().map(|(_, r)| r.node.clone()).collect();
    node_ids.sort();
    node_ids.dedup();
    let relays = match room.parse() {
        Ok(room_id) => room_relays(&state, &room_id, &node_ids).await,
        Err(_) => Vec::new(),
    };
    let relayed_to = |track: &str| -> Vec<String> {
        relays
            .iter()
            .filter(|r| {
                r.from
                    .iter()
                    .flatten()
                    .any(|f| f.tracks.iter().any(|t| t == track))
            })
            .map(|r| r.node.clone())
            .collect()
    };
    let tracks: Vec<TrackView> = tracks
        .into_iter()
        .map(|t| {
            let track = t.track.to_string();
            TrackView {
                relayed_to: relayed_to(&track),
                track,
                identity: t.identity,
                kind: t.kind.as_str(),
                layers: t.layers,
            }
        })
        .collect();
    let nodes = node_ids.iter().map(ToString::to_string).collect();
    Json(RoomDetail {
        room,
        nodes,
        sessions: sessions
            .into_iter()
            .map(|(id, r)| SessionView {
                session: id.to_string(),
                kind: r.kind.as_str(),
                identity: r.identity,
                node: r.node.to_string(),
            })
            .collect(),
        tracks,
        relays,
    })
    .into_response()
}

/// Ask each of `nodes` what it relays of `room`, all at once.
async fn room_relays(state: &AppState, room: &RoomId, nodes: &[NodeId]) -> Vec<RelayView> {
    let asks = nodes.iter().map(|node| async move {
        let answer = match state.nodes.client(node) {
            Some(client) => {
                client
                    .call(NodeRequest::RoomRelays { room: room.clone() })
                    .await
            }
            None => NodeResponse::Error(sfu_core::NodeError::Stopped),
        };
        match answer {
            NodeResponse::RoomRelays(r) => RelayView {
                node: node.to_string(),
                from: Some(
                    r.from
                        .into_iter()
                        .map(|f| RelayedFromView {
                            node: f.node.to_string(),
                            tracks: f.tracks.iter().map(ToString::to_string).collect(),
                        })
                        .collect(),
                ),
                to: r.to.iter().map(ToString::to_string).collect(),
            },
            _ => RelayView {
                node: node.to_string(),
                from: None,
                to: Vec::new(),
            },
        }
    });
    futures_util::future::join_all(asks).await
}

/// The sessions and tracks of `room`; `404` when it has none, `503` when the store does not
/// answer.
async fn room_sessions(
    state: &AppState,
    room: &str,
) -> Result<(Vec<(SessionId, SessionRecord)>, Vec<TrackInfo>), Response> {
    let (sessions, tracks) = state.sessions.room(room).await.map_err(store_unavailable)?;
    if sessions.is_empty() {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("no session in room {room:?}"),
        ));
    }
    Ok((sessions, tracks))
}

/// `DELETE /api/rooms/{room}`: end every session of the room.
pub async fn delete_room(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let claims = match admin(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (sessions, _) = match room_sessions(&state, &room).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let mut ended = 0;
    for (session, record) in &sessions {
        if end_session(&state, *session, &record.node).await {
            ended += 1;
        }
    }
    tracing::info!(%room, ended, admin = %claims.sub, "room ended by an admin");
    Json(serde_json::json!({ "room": room, "ended": ended })).into_response()
}

/// End `session` on `node` and forget it; whether the node ended it (its client then gets
/// 404 on the resource and posts again).
pub(crate) async fn end_session(state: &AppState, session: SessionId, node: &NodeId) -> bool {
    let ended = match state.nodes.client(node) {
        Some(client) => matches!(
            client.call(NodeRequest::CloseSession { session }).await,
            NodeResponse::Done
        ),
        None => false,
    };
    if let Err(e) = state.sessions.remove(session).await {
        tracing::warn!(%session, error = %e, "cannot forget an ended session");
    }
    ended
}

/// The caller's admin token and the node `node` names; the response otherwise (`404` for a
/// name that is no node id).
#[allow(clippy::result_large_err)] // the error is the response, sent as it is
fn admin_on_node(
    state: &AppState,
    headers: &HeaderMap,
    node: &str,
) -> Result<(auth::Claims, NodeId), Response> {
    let claims = admin(state, headers)?;
    let id = node
        .parse::<NodeId>()
        .map_err(|_| text(StatusCode::NOT_FOUND, format!("no node {node:?}")))?;
    Ok((claims, id))
}

/// `DELETE /api/nodes/{id}`: forget a dead node (`404` unknown, `409` alive or held by
/// another control instance).
pub async fn forget_node(
    State(state): State<Arc<AppState>>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (claims, id) = match admin_on_node(&state, &headers, &node) {
        Ok(found) => found,
        Err(r) => return r,
    };
    match state.nodes.forget(&id) {
        Ok(()) => {
            tracing::info!(%node, admin = %claims.sub, "dead node forgotten by an admin");
            Json(serde_json::json!({ "node": node, "forgotten": true })).into_response()
        }
        Err(e @ ForgetError::Unknown) => text(StatusCode::NOT_FOUND, format!("node {node:?}: {e}")),
        Err(e) => text(StatusCode::CONFLICT, format!("node {node:?}: {e}")),
    }
}

/// `POST /api/nodes/{id}/drain`: no new rooms on the node; its rooms continue.
pub async fn drain(
    State(state): State<Arc<AppState>>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_draining(state, node, headers, true).await
}

/// `POST /api/nodes/{id}/undrain`: back in service.
pub async fn undrain(
    State(state): State<Arc<AppState>>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_draining(state, node, headers, false).await
}

async fn set_draining(
    state: Arc<AppState>,
    node: String,
    headers: HeaderMap,
    drain: bool,
) -> Response {
    let (claims, id) = match admin_on_node(&state, &headers, &node) {
        Ok(found) => found,
        Err(r) => return r,
    };
    let now = Instant::now();
    let changes = if drain {
        state.nodes.drain(&id, now)
    } else {
        state.nodes.undrain(&id, now)
    };
    let state_name = match changes {
        Some(changes) => {
            log_changes(&changes);
            state.nodes.state(&id).map_or("unknown", |s| s.as_str())
        }
        None => {
            // Held by another control instance (shared store), which runs the node's health
            // machine: ask it.
            let Some(client) = state.nodes.client(&id) else {
                return text(StatusCode::NOT_FOUND, format!("no node {node:?}"));
            };
            let Some(call) = client.drain_through_holder(drain) else {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("no remote node {node:?} (the embedded node cannot be drained)"),
                );
            };
            match call.await {
                NodeResponse::Done if drain => "draining",
                NodeResponse::Done => "up",
                other => {
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "node {node:?} is held by another control instance, which did not \
                             carry out the request: {other:?}"
                        ),
                    );
                }
            }
        }
    };
    tracing::info!(%node, drain, admin = %claims.sub, "node drain changed by an admin");
    Json(serde_json::json!({ "node": node, "state": state_name })).into_response()
}
