//! One WebSocket of the room protocol: the upgrade, the join handshake, and the limits every
//! socket lives under (message size, message rate, errors, keepalive). What a joined socket
//! says goes to its participant task ([`super::participant`]); what the participant says goes
//! out through the socket's writer, which also counts the errors it sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use sfu_core::ids::RoomId;
use sfu_core::limit::Bucket;
use tokio::sync::{Notify, mpsc, oneshot};

use super::participant::{self, Input};
use super::protocol::{self, ClientMessage, ErrorCode, Reply, ServerMessage, close};
use crate::auth::{self, Claims, Grant};
use crate::http::{AppState, text};

/// A socket must join within this long of opening.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The server pings every this long ...
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// ... and a socket silent for this long (no message, no pong) is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Messages waiting for a slow client before it is dropped.
pub const OUTBOX: usize = 512;

/// What goes out on a socket.
#[derive(Debug)]
pub enum Outgoing {
    Message(Box<Reply>),
    /// Close with this code and reason; nothing is sent after it.
    Close(u16, String),
}

/// A participant's way to its current socket.
#[derive(Debug, Clone)]
pub struct SocketHandle {
    pub id: u64,
    tx: mpsc::Sender<Outgoing>,
    /// Rung when the outbox overflows: the writer drops the socket even while it waits on
    /// the client (a close queued behind a full outbox would never be read).
    overflow: Arc<Notify>,
}

impl SocketHandle {
    /// A handle and the receiving end of its outbox (for the socket's writer).
    fn new(id: u64) -> (Self, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let overflow = Arc::new(Notify::new());
        (Self { id, tx, overflow }, rx)
    }

    /// Queue a message; a client too slow to take [`OUTBOX`] messages is dropped.
    pub fn send(&self, message: ServerMessage, req: Option<u64>) {
        self.queue(Outgoing::Message(Box::new(Reply { message, req })));
    }

    pub fn close(&self, code: u16, reason: &str) {
        self.queue(Outgoing::Close(code, reason.to_string()));
    }

    fn queue(&self, outgoing: Outgoing) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(outgoing) {
            tracing::info!(
                socket = self.id,
                "room socket too slow to read its messages; closing it"
            );
            self.overflow.notify_one();
        }
    }

    pub fn error(&self, code: ErrorCode, message: impl Into<String>, req: Option<u64>) {
        self.send(
            ServerMessage::Error {
                code,
                message: message.into(),
            },
            req,
        );
    }
}

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// `GET /rtc/{room}`: upgrade to the room protocol. A bad room name or a bad token in the
/// `Authorization` header is refused before the upgrade, with the HTTP status WHIP would give.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(room) = room.parse::<RoomId>() else {
        return text(
            StatusCode::BAD_REQUEST,
            "room names are 1-128 characters of A-Z a-z 0-9 . _ -",
        );
    };
    let claims = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(value) => match state.verifier.verify_header(Some(value)) {
            Ok(claims) => Some(claims),
            Err(e) => {
                let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
                return text(status, e.to_string());
            }
        },
        None => None,
    };
    let limit = state.rtc.max_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(state, room, claims, socket))
        .into_response()
}

/// Serve one socket until it closes.
async fn serve(
    state: Arc<AppState>,
    room: RoomId,
    header_claims: Option<Claims>,
    socket: WebSocket,
) {
    let id = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
    let (sink, mut stream) = socket.split();
    let (handle, rx) = SocketHandle::new(id);
    let (writer_done, mut writer_ended) = oneshot::channel();
    tokio::spawn(write(
        sink,
        rx,
        handle.overflow.clone(),
        state.rtc.max_errors,
        writer_done,
    ));

    let mut bucket = Bucket::new(
        state.rtc.messages_per_sec,
        state.rtc.message_burst,
        Instant::now(),
    );
    let mut participant: Option<mpsc::Sender<Input>> = None;
    let join_deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        let wait = if participant.is_some() {
            tokio::time::Instant::now() + IDLE_TIMEOUT
        } else {
            join_deadline
        };
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::time::sleep_until(wait) => {
                if participant.is_some() {
                    tracing::info!(socket = id, %room, "room socket silent; dropping it");
                    handle.close(close::POLICY, "no message or pong for too long");
                } else {
                    handle.close(close::POLICY, "no join within 10 s");
                }
                break;
            }
            _ = &mut writer_ended => break,
        };
        let text = match next {
            None => break,
            Some(Err(e)) => {
                // Oversized messages end here (tungstenite refuses them while reading).
                let message = e.to_string();
                if message.contains("too long") || message.contains("too big") {
                    handle.error(
                        ErrorCode::TooLarge,
                        format!(
                            "message larger than rtc.max_message_bytes ({} bytes)",
                            state.rtc.max_message_bytes
                        ),
                        None,
                    );
                    handle.close(close::TOO_LARGE, "message too large");
                }
                tracing::debug!(socket = id, error = %message, "room socket read failed");
                break;
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                handle.error(
                    ErrorCode::BadMessage,
                    "binary frames are not part of the protocol: send JSON text",
                    None,
                );
                continue;
            }
            Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => continue, // ping / pong: axum answers pings
        };
        if !bucket.take(Instant::now()) {
            handle.error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second (rtc.messages_per_sec); message dropped",
                    state.rtc.messages_per_sec
                ),
                None,
            );
            continue;
        }
        let request = match protocol::parse(text.as_str()) {
            Ok(request) => request,
            Err(bad) => {
                handle.error(ErrorCode::BadMessage, bad.message, bad.req);
                continue;
            }
        };
        match (&participant, request.message) {
            (
                None,
                ClientMessage::Join {
                    v,
                    token,
                    name,
                    auto_subscribe,
                    resume,
                },
            ) => {
                let join = Join {
                    req: request.req,
                    v,
                    token,
                    name,
                    auto_subscribe,
                    resume,
                };
                // Refused: the error is queued, the socket closes or stays unjoined.
                participant = join_room(&state, &room, header_claims.as_ref(), join, &handle).await;
            }
            (None, other) => handle.error(
                ErrorCode::NotJoined,
                format!("send join before {}", other.kind()),
                request.req,
            ),
            (Some(_), ClientMessage::Join { .. }) => handle.error(
                ErrorCode::AlreadyJoined,
                "this socket has joined already",
                request.req,
            ),
            (Some(p), message) => {
                let input = Input::Client {
                    socket: id,
                    req: request.req,
                    message,
                };
                if p.send(input).await.is_err() {
                    break; // the participant ended (left, replaced): its close is queued
                }
            }
        }
    }
    if let Some(p) = participant {
        let _ = p.send(Input::Detached { socket: id }).await;
    }
}

/// A `join` message's fields.
#[derive(Debug)]
struct Join {
    req: Option<u64>,
    v: u32,
    token: Option<String>,
    name: Option<String>,
    auto_subscribe: bool,
    resume: Option<String>,
}

/// Check a join and start (or resume) its participant. `None` when refused: the error (and a
/// close, where the protocol says so) is queued on the socket.
async fn join_room(
    state: &Arc<AppState>,
    room: &RoomId,
    header_claims: Option<&Claims>,
    join: Join,
    socket: &SocketHandle,
) -> Option<mpsc::Sender<Input>> {
    let req = join.req;
    if join.v != protocol::VERSION {
        socket.error(
            ErrorCode::UnsupportedVersion,
            format!(
                "this server speaks version {}, not {}",
                protocol::VERSION,
                join.v
            ),
            req,
        );
        socket.close(close::UNSUPPORTED_VERSION, "unsupported version");
        return None;
    }
    let claims = match (&join.token, header_claims) {
        (Some(token), _) => state.verifier.verify(token),
        (None, Some(claims)) => Ok(claims.clone()),
        (None, None) => Err(auth::AuthError::Missing),
    };
    let claims = match claims {
        Ok(claims) => claims,
        Err(e) => {
            socket.error(ErrorCode::Unauthorized, e.to_string(), req);
            socket.close(close::UNAUTHORIZED, "unauthorized");
            return None;
        }
    };
    if let Err(e) = auth::authorize(&claims, room.as_str(), Grant::Subscribe) {
        socket.error(ErrorCode::Forbidden, e.to_string(), req);
        socket.close(close::FORBIDDEN, "forbidden");
        return None;
    }
    if let Some(token) = &join.resume {
        return match state.rtc_hub.take_resume(token) {
            Some((r, identity, participant)) if r == room.as_str() && identity == claims.sub => {
                let input = Input::Attach {
                    socket: socket.clone(),
                    req,
                };
                participant.send(input).await.ok().map(|()| participant)
            }
            Some((r, identity, participant)) => {
                // Not this socket's to take: put it back.
                state
                    .rtc_hub
                    .set_resume(token, None, (r, identity, participant));
                socket.error(
                    ErrorCode::ResumeFailed,
                    "the resume token is for another room or identity",
                    req,
                );
                None
            }
            None => {
                socket.error(
                    ErrorCode::ResumeFailed,
                    "the resume token is unknown, used or expired: join without it",
                    req,
                );
                None
            }
        };
    }
    let name = join
        .name
        .map(|n| protocol::truncate(n.trim(), protocol::MAX_NAME_CHARS))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| claims.sub.clone());
    participant::start(
        state.clone(),
        room.clone(),
        claims,
        name,
        join.auto_subscribe,
        socket.clone(),
        req,
    )
    .await
}

/// The socket's writer: messages out, WebSocket pings every [`PING_INTERVAL`], errors
/// counted (the socket is closed with 4008 at `max_errors`). Ends after a close.
async fn write(
    sink: futures_util::stream::SplitSink<WebSocket, Message>,
    rx: mpsc::Receiver<Outgoing>,
    overflow: Arc<Notify>,
    max_errors: u32,
    done: oneshot::Sender<()>,
) {
    // An overflowing outbox ends the writer wherever it waits, sending included: the client
    // is not reading, so a close frame would wait behind everything else.
    tokio::select! {
        biased;
        _ = overflow.notified() => {}
        _ = write_all(sink, rx, max_errors) => {}
    }
    let _ = done.send(());
}

/// The writer's work until the outbox or the socket closes; the socket is closed on return.
async fn write_all(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    max_errors: u32,
) {
    let mut errors = 0u32;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        let outgoing = tokio::select! {
            o = rx.recv() => o,
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Some(outgoing) = outgoing else { break };
        match outgoing {
            Outgoing::Message(reply) => {
                let is_error = matches!(reply.message, ServerMessage::Error { .. });
                if sink
                    .send(Message::Text(Utf8Bytes::from(reply.to_json())))
                    .await
                    .is_err()
                {
                    break;
                }
                if is_error {
                    errors += 1;
                    if errors >= max_errors {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: close::POLICY,
                                reason: Utf8Bytes::from_static("too many errors (rtc.max_errors)"),
                            })))
                            .await;
                        break;
                    }
                }
            }
            Outgoing::Close(code, reason) => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: Utf8Bytes::from(reason),
                    })))
                    .await;
                break;
            }
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn a_full_outbox_rings_the_writer_instead_of_queueing_a_close_behind_it() {
        let (handle, mut rx) = SocketHandle::new(7);
        for _ in 0..OUTBOX {
            handle.close(close::POLICY, "queued");
        }
        assert!(
            handle.overflow.notified().now_or_never().is_none(),
            "rung before the outbox was full"
        );
        handle.close(close::POLICY, "one too many");
        assert!(
            handle.overflow.notified().now_or_never().is_some(),
            "an overflow must reach the writer"
        );
        // What was queued stays queued; the one that did not fit is not added.
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, OUTBOX);
    }
}
