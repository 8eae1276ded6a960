//! The HTTP surface: WHIP/WHEP signaling, health, metrics, the demo page and (dev only) token
//! minting. Handlers translate HTTP to node API calls and node errors back to status codes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sfu_core::ids::{NodeId, ParticipantId, RoomId, SessionId};
use sfu_core::proto::{CreateSession, SubscribePolicy};
use sfu_core::{NodeError, NodeRequest, NodeResponse, SessionCreated, SessionKind};

use crate::auth::{self, AuthError, Grant, Grants, Verifier};
use crate::cluster::nodes::Nodes;
use crate::node_client;
use crate::ratelimit::{RetryAfter, SignalingLimiter};
use crate::store::{CapExceeded, Caps, ReserveError, Store, StoreError};
use crate::turn::TurnIssuer;

/// Response header naming the media node that serves a new session.
pub const NODE_HEADER: header::HeaderName = header::HeaderName::from_static("x-sfu-node");

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// The media nodes (embedded and remote), reached only through the node API.
    pub nodes: Arc<Nodes>,
    /// Sessions control created (room, kind, identity), for `DELETE` checks and the caps;
    /// shared with other control instances when the store is Redis.
    pub sessions: Store,
    /// `[cluster]` is on: readiness needs a node that is up.
    pub cluster: bool,
    pub verifier: Verifier,
    /// Serve `POST /dev/token` (development only).
    pub dev: bool,
    pub max_body_bytes: usize,
    /// Per-client-IP token buckets for signaling POSTs; `None` when switched off.
    pub limiter: Option<SignalingLimiter>,
    /// Session caps per identity, per room and in total.
    pub caps: Caps,
    /// TURN credentials for clients (`[turn]`); `None` when not configured.
    pub turn: Option<TurnIssuer>,
    /// `cascade.idle_secs`, passed to nodes that relay a room.
    pub relay_idle_secs: u32,
    /// `[rtc]`: the room protocol's limits.
    pub rtc: crate::rtc::RtcConfig,
    /// This instance's meeting participants.
    pub rtc_hub: crate::rtc::Hub,
    /// The WHIP publishers this instance listed in their rooms.
    pub rtc_whip: crate::rtc::whip::WhipMembers,
    /// `[ptt]`: push-to-talk channels' floor limits.
    pub ptt: crate::rtc::floor::PttConfig,
    /// `[hybrid]`: rooms peer to peer while small.
    pub hybrid: crate::rtc::hybrid::HybridSettings,
    /// This instance's room chairs ([`crate::rtc::chair`]).
    pub chairs: crate::rtc::chair::Chairs,
}

/// Build the router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    let mut router = Router::new()
        .route("/", get(meeting_html))
        .route("/broadcast", get(broadcast_html))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/meeting", get(meeting_html))
        .route("/meeting.js", get(meeting_js))
        .route("/meeting.css", get(meeting_css))
        .route("/sdk/room.js", get(room_js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/turn", get(turn_credentials).options(preflight))
        .route("/api/nodes", get(crate::admin::nodes))
        .route(
            "/api/nodes/{node}",
            axum::routing::delete(crate::admin::forget_node),
        )
        .route("/api/nodes/{node}/drain", post(crate::admin::drain))
        .route("/api/nodes/{node}/undrain", post(crate::admin::undrain))
        .route("/api/rooms", get(crate::admin::rooms))
        .route(
            "/api/rooms/{room}",
            get(crate::admin::room).delete(crate::admin::delete_room),
        )
        .route(
            "/api/rooms/{room}/settings",
            get(crate::admin::room_settings)
                .put(crate::admin::put_room_settings)
                .delete(crate::admin::delete_room_settings),
        )
        .route("/rtc/{room}", get(crate::rtc::socket::upgrade))
        .route("/whip/{room}", post(whip_post).options(preflight))
        .route(
            "/whip/{room}/{session}",
            axum::routing::delete(whip_delete)
                .patch(whip_patch)
                .options(preflight),
        )
        .route("/whep/{room}", post(whep_post).options(preflight))
        .route(
            "/whep/{room}/{session}",
            axum::routing::delete(whep_delete)
                .patch(whep_patch)
                .options(preflight),
        );
    if state.dev {
        router = router.route("/dev/token", post(dev_token));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_signaling,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(cors))
        .with_state(state)
}

/// Every POST (WHIP, WHEP, dev token: the requests that cost a token check, an SDP parse and
/// a node call) and every room socket upgrade (`/rtc/{room}`: a socket held until its join,
/// then a token check) draws from its client's token bucket first; an empty bucket is `429`
/// with `Retry-After`. The client is the TCP peer: behind a reverse proxy, the proxy.
async fn limit_signaling(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::POST || request.uri().path().starts_with("/rtc/") {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let (Some(limiter), Some(ip)) = (&state.limiter, peer) {
            if let Err(RetryAfter(secs)) = limiter.check(ip) {
                tracing::debug!(%ip, path = %request.uri().path(), "signaling rate limit");
                let mut response = text(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many signaling requests from {ip}: retry in {secs} s \
                         (limits.signaling_rate_per_sec / limits.signaling_burst)"
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return response;
            }
        }
    }
    next.run(request).await
}

/// WHIP/WHEP clients may run on other origins (players, OBS browser docks): allow them.
/// Authorization is by bearer token, never by cookie, so a wildcard origin is safe.
async fn cors(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Retry-After, X-Sfu-Node"),
    );
    response
}

/// CORS preflight for the signaling endpoints.
async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "POST, DELETE, PATCH, OPTIONS",
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type, If-Match",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
            (header::ALLOW, "POST, DELETE, PATCH, OPTIONS"),
        ],
    )
        .into_response()
}

pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut message = message.into();
    message.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// The WHIP/WHEP demo page: publish with simulcast, watch the room.
async fn broadcast_html() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../static/index.html"),
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/style.css"),
    )
        .into_response()
}

/// A static file of the meeting page or the client SDK.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn meeting_html() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("../static/meeting.html"),
    )
}

async fn meeting_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../static/meeting.js"),
    )
}

async fn meeting_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../static/meeting.css"),
    )
}

/// The room protocol's JavaScript client, an ES module (docs/sdk.md).
async fn room_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../static/sdk/room.js"),
    )
}

/// 503 from the moment a worker stops until the watchdog (within a second) ends the process.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    // Liveness is this process and its own workers; remote nodes and the store do not count.
    let Some(node) = state.nodes.embedded() else {
        return text(StatusCode::OK, "ok");
    };
    let health = node_client::health(node.as_ref()).await;
    let stopped = crate::watchdog::stopped_workers(&health.workers_up);
    if stopped.is_empty() {
        text(StatusCode::OK, "ok")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("a media worker has stopped (workers {stopped:?})"),
        )
    }
}

/// The store failed: 503 with what the operator needs to know.
pub(crate) fn store_unavailable(e: StoreError) -> Response {
    tracing::warn!(error = %e, "state store call failed");
    text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Readiness: whether a new session could be served now. The store must answer and, with
/// `[cluster]`, a node must be up (the embedded node always is). Unlike `/healthz`, a load
/// balancer should take an instance that is not ready out of rotation, not restart it.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if let Err(e) = state.sessions.ping().await {
        return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    if state.cluster && state.nodes.embedded().is_none() && !state.nodes.any_up() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no media node is up: none has joined (cluster.listen) or all are suspect, dead or draining",
        );
    }
    text(StatusCode::OK, "ready")
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (stats, workers_up) = match state.nodes.embedded() {
        Some(node) => (
            node_client::stats(node.as_ref()).await.unwrap_or_default(),
            node_client::health(node.as_ref()).await.workers_up,
        ),
        None => Default::default(),
    };
    // A store that does not answer shows in sfu_store_up; the session count is then unknown.
    let sessions = state.sessions.session_count().await.unwrap_or(0);
    let mut body = crate::metrics::render(&stats, &workers_up, sessions);
    crate::metrics::render_cluster(&mut body, &state.nodes);
    let (errors, up) = state.sessions.health();
    crate::metrics::render_store(&mut body, errors, up);
    state.chairs.render(&mut body);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The request's bearer token, verified; the `401` to send otherwise.
#[allow(clippy::result_large_err)] // the error is the response, sent as it is
pub(crate) fn bearer(state: &AppState, headers: &HeaderMap) -> Result<auth::Claims, Response> {
    state
        .verifier
        .verify_header(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .map_err(auth_error)
}

fn auth_error(e: AuthError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = text(status, e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn node_error(e: NodeError) -> Response {
    let status = match e {
        NodeError::BadOffer(_) => StatusCode::BAD_REQUEST,
        NodeError::UnknownSession => StatusCode::NOT_FOUND,
        NodeError::NoCapacity | NodeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, e.to_string())
}

async fn whip_post(
    state: State<Arc<AppState>>,
    room: Path<String>,
    query: Query<OfferQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(state, room, query, headers, body, SessionKind::Publish).await
}

async fn whep_post(
    state: State<Arc<AppState>>,
    room: Path<String>,
    query: Query<OfferQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(state, room, query, headers, body, SessionKind::Subscribe).await
}

/// `?region=NAME` on WHIP/WHEP: prefer media nodes of that region. `?participant=IDENTITY`
/// on WHEP: watch that participant rather than the newest other publisher.
#[derive(Debug, Default, Deserialize)]
pub struct OfferQuery {
    region: Option<String>,
    participant: Option<String>,
}

/// The longest identity `?participant=` may name.
const MAX_IDENTITY_CHARS: usize = 256;

async fn offer(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    Query(query): Query<OfferQuery>,
    headers: HeaderMap,
    body: Bytes,
    kind: SessionKind,
) -> Response {
    let Ok(room_id) = room.parse::<RoomId>() else {
        return text(
            StatusCode::BAD_REQUEST,
            "room names are 1-128 characters of A-Z a-z 0-9 . _ -",
        );
    };
    let claims = match bearer(&state, &headers) {
        Ok(c) => c,
        Err(response) => return response,
    };
    let grant = match kind {
        SessionKind::Publish => Grant::Publish,
        SessionKind::Subscribe => Grant::Subscribe,
    };
    if let Err(e) = auth::authorize(&claims, &room, grant) {
        return auth_error(e);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/sdp, got {content_type:?}"),
        );
    }
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "SDP offer is not UTF-8");
    };
    if !sdp.trim_start().starts_with("v=0") {
        return text(
            StatusCode::BAD_REQUEST,
            "bad offer: SDP must start with the line v=0",
        );
    }
    let policy = match (&query.participant, kind) {
        (None, _) => SubscribePolicy::NewestOther,
        (Some(_), SessionKind::Publish) => {
            return text(
                StatusCode::BAD_REQUEST,
                "?participant= names whom a WHEP viewer watches; a WHIP offer cannot use it",
            );
        }
        (Some(who), SessionKind::Subscribe) => {
            if who.is_empty() || who.chars().count() > MAX_IDENTITY_CHARS {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "?participant= must name an identity of 1-{MAX_IDENTITY_CHARS} characters"
                    ),
                );
            }
            SubscribePolicy::Participant(ParticipantId::from_identity(who))
        }
    };
    let placed = create_session(
        &state,
        &room_id,
        &claims.sub,
        kind,
        sdp,
        policy,
        query.region.as_deref(),
    )
    .await;
    let (created, node_id) = match placed {
        Ok(placed) => (placed.created, placed.node),
        Err(e) => return e.into_response(),
    };
    if kind == SessionKind::Publish {
        crate::rtc::whip::published(&state, &room_id, &claims.sub, &created).await;
    }
    tracing::info!(
        %room,
        kind = kind.as_str(),
        identity = %claims.sub,
        session = %created.session,
        worker = %created.worker,
        "session created"
    );
    let prefix = match kind {
        SessionKind::Publish => "whip",
        SessionKind::Subscribe => "whep",
    };
    let location = format!("/{prefix}/{room}/{}", created.session);
    let etag = format!("\"{}\"", created.session);
    let mut response = (StatusCode::CREATED, created.answer_sdp).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Which media node serves the session: for operators' logs and load tools that split
    // their figures by node (a node id is a config name, never a secret).
    if let Ok(v) = HeaderValue::from_str(node_id.as_str()) {
        h.insert(NODE_HEADER, v);
    }
    if let Some(turn) = &state.turn {
        for link in turn.issue(&claims.sub, auth::unix_now()).link_headers() {
            if let Ok(v) = HeaderValue::from_str(&link) {
                h.append(header::LINK, v);
            }
        }
    }
    response
}

/// A session a node created for control.
#[derive(Debug)]
pub(crate) struct Placed {
    pub created: SessionCreated,
    pub node: NodeId,
}

/// Why control could not create a session. WHIP/WHEP and the room protocol word it their own
/// way; the message is the same.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OfferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NoNode(String),
    #[error(transparent)]
    Cap(#[from] CapExceeded),
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl IntoResponse for OfferError {
    fn into_response(self) -> Response {
        match self {
            OfferError::Store(e) => store_unavailable(e),
            OfferError::NoNode(e) => text(StatusCode::SERVICE_UNAVAILABLE, e),
            OfferError::Cap(e) => {
                let status = match e {
                    CapExceeded::Identity { .. } | CapExceeded::Room { .. } => {
                        StatusCode::TOO_MANY_REQUESTS
                    }
                    CapExceeded::Node { .. } => StatusCode::SERVICE_UNAVAILABLE,
                };
                text(status, e.to_string())
            }
            OfferError::Node(e) => node_error(e),
        }
    }
}

/// Place a new session of `room` on a node and have the node answer `sdp`: the node the room
/// lives on (relaying it from its other nodes, if it spans several), the session recorded
/// under the caps before the node does any work. Its id is chosen here: 128 random bits,
/// unique across nodes, and the secret part of a WHIP/WHEP session's URL.
pub(crate) async fn create_session(
    state: &AppState,
    room_id: &RoomId,
    identity: &str,
    kind: SessionKind,
    sdp: String,
    policy: SubscribePolicy,
    region: Option<&str>,
) -> Result<Placed, OfferError> {
    let room = room_id.as_str();
    let session = SessionId::random();
    let view = state.sessions.placement_view(room).await?;
    let (node_id, node) = state.nodes.place(room_id, region, &view).map_err(|e| {
        tracing::warn!(%room, error = %e, "no media node for an offer");
        OfferError::NoNode(e.to_string())
    })?;
    // The room also lives on other nodes (its node drains, ...): relay it between them and
    // this one before the session starts, so its media flows from the first packet.
    if view.room_nodes.iter().any(|(n, _)| *n != node_id) {
        let others: Vec<NodeId> = view.room_nodes.iter().map(|(n, _)| n.clone()).collect();
        crate::cluster::cascade::connect(
            &state.nodes,
            room_id,
            &node_id,
            &others,
            state.relay_idle_secs,
        )
        .await;
    }
    let reservation = match state
        .sessions
        .reserve(session, &node_id, room, kind, identity, state.caps)
        .await
    {
        Ok(r) => r,
        Err(ReserveError::Store(e)) => return Err(e.into()),
        Err(ReserveError::Cap(e)) => {
            tracing::info!(%room, kind = kind.as_str(), %identity, error = %e, "offer refused");
            return Err(e.into());
        }
    };
    let request = NodeRequest::CreateSession(CreateSession {
        session,
        room: room_id.clone(),
        kind,
        identity: identity.to_string(),
        offer_sdp: sdp,
        policy,
    });
    let created = match node.call(request).await {
        NodeResponse::SessionCreated(c) => c,
        NodeResponse::Error(e) => {
            tracing::info!(%room, kind = kind.as_str(), %identity, error = %e, "offer refused");
            return Err(e.into());
        }
        other => {
            return Err(
                NodeError::SessionFailed(format!("unexpected node response {other:?}")).into(),
            );
        }
    };
    if !reservation.commit(created.worker).await {
        tracing::info!(%room, %session, "session ended before its answer was sent");
    }
    Ok(Placed {
        created,
        node: node_id,
    })
}

/// `GET /api/turn`: TURN credentials for the token's identity (any valid token), for clients
/// that configure their ICE servers before they make the offer the WHIP/WHEP answer would
/// carry them on.
async fn turn_credentials(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let claims = match bearer(&state, &headers) {
        Ok(c) => c,
        Err(response) => return response,
    };
    let Some(turn) = &state.turn else {
        return text(
            StatusCode::NOT_FOUND,
            "TURN is not configured on this server (turn.secret, turn.urls)",
        );
    };
    let credentials = turn.issue(&claims.sub, auth::unix_now());
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(credentials),
    )
        .into_response()
}

async fn whip_delete(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(state, path, headers, SessionKind::Publish).await
}

async fn whep_delete(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(state, path, headers, SessionKind::Subscribe).await
}

/// The session at `/{kind}/{room}/{session}` if the request's token may act on it: a valid
/// token for the room (401/403), a session of this kind in this room (404), created by the
/// token's identity or acted on by the room's admin (403).
// The error is the response, sent as it is, once per request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
async fn owned_session(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
    session: &str,
    kind: SessionKind,
) -> Result<(SessionId, auth::Claims, crate::store::SessionRecord), Response> {
    let claims = bearer(state, headers)?;
    auth::authorize(&claims, room, Grant::Any).map_err(auth_error)?;
    let not_found = || text(StatusCode::NOT_FOUND, "no such session");
    let session = session.parse::<SessionId>().map_err(|_| not_found())?;
    // The session must be of this kind and in this room.
    let record = match state.sessions.get(session).await {
        Ok(Some(record)) if record.kind == kind && record.room == room => record,
        Ok(_) => return Err(not_found()),
        Err(e) => return Err(store_unavailable(e)),
    };
    if let Err(e) = auth::authorize_owner(&claims, room, &record.identity) {
        tracing::info!(
            %room,
            %session,
            identity = %claims.sub,
            "refused: the session belongs to another identity"
        );
        return Err(auth_error(e));
    }
    Ok((session, claims, record))
}

async fn delete(
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    kind: SessionKind,
) -> Response {
    let (session, claims, record) =
        match owned_session(&state, &headers, &room, &session, kind).await {
            Ok(owned) => owned,
            Err(response) => return response,
        };
    let node = state.nodes.client(&record.node);
    let reply = match node {
        Some(node) => node.call(NodeRequest::CloseSession { session }).await,
        None => NodeResponse::Error(NodeError::UnknownSession),
    };
    // Whatever the node says, control forgets the session: either it just ended, or it had
    // already ended on its own (ICE timeout) and the node no longer knows it.
    if let Err(e) = state.sessions.remove(session).await {
        tracing::warn!(%session, error = %e, "cannot forget a deleted session");
    }
    match reply {
        NodeResponse::Done => {
            tracing::info!(%room, %session, identity = %claims.sub, "session deleted");
            text(StatusCode::OK, "session ended")
        }
        NodeResponse::Error(e) => node_error(e),
        other => node_error(NodeError::SessionFailed(format!(
            "unexpected node response {other:?}"
        ))),
    }
}

async fn whip_patch(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    patch(state, path, headers, SessionKind::Publish).await
}

async fn whep_patch(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    patch(state, path, headers, SessionKind::Subscribe).await
}

/// RFC 9725 §4.3: a server without trickle ICE / ICE restart answers PATCH with 405. The
/// request is checked like a `DELETE` first, so that only the session's owner learns even that.
async fn patch(
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    kind: SessionKind,
) -> Response {
    if let Err(response) = owned_session(&state, &headers, &room, &session, kind).await {
        return response;
    }
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle ICE and ICE restarts are not supported; the answer carries the only candidate",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("DELETE"));
    response
}

#[derive(Debug, Deserialize)]
struct DevTokenRequest {
    room: String,
    identity: String,
    /// The room's admin grant (the demo page sets its room's type with it).
    #[serde(default)]
    admin: bool,
    /// Push to talk: take the floor at once.
    #[serde(default)]
    moderator: bool,
}

/// Development only: mint a publish+subscribe token for the demo page (optionally with the
/// room's admin or moderator grant: development keys are public anyway).
async fn dev_token(body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<DevTokenRequest>(&body) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"room\": \"...\", \"identity\": \"...\"}",
        );
    };
    if req.room.parse::<RoomId>().is_err() {
        return text(
            StatusCode::BAD_REQUEST,
            "room names are 1-128 characters of A-Z a-z 0-9 . _ -",
        );
    }
    let grants = Grants {
        publish: true,
        subscribe: true,
        admin: req.admin,
        moderator: req.moderator,
    };
    match auth::mint(
        auth::DEV_API_KEY,
        auth::DEV_API_SECRET,
        &req.room,
        &req.identity,
        grants,
        auth::unix_now(),
        6 * 3600,
    ) {
        Ok(token) => axum::Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot mint: {e}"),
        ),
    }
}
