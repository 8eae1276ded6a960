//! The first frames on a node link (see `sfu_proto::cluster`): versions, the challenge, the
//! registration and control's verdict. Each side is bounded by [`HANDSHAKE_TIMEOUT`].

use std::time::Duration;

use sfu_proto::{Frame, PROTOCOL_VERSION, Registration};

use crate::stream::{FrameReceiver, FrameSender};
use crate::{LinkError, auth};

/// A handshake that takes longer fails (a peer that connects and says nothing).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The node API stream of a link that came up.
#[derive(Debug)]
pub struct Established {
    pub sender: FrameSender,
    pub receiver: FrameReceiver,
}

/// Node side: open the API stream, prove the secret and register. `Err(Refused)` carries
/// control's reason.
pub async fn register(
    connection: &quinn::Connection,
    secret: &[u8],
    registration: Registration,
) -> Result<Established, LinkError> {
    bounded(async {
        let (send, recv) = connection.open_bi().await?;
        let (mut sender, mut receiver) = (FrameSender::new(send), FrameReceiver::new(recv));
        sender
            .send(&Frame::Hello {
                version: PROTOCOL_VERSION,
                node: Some(registration.node.clone()),
            })
            .await?;
        match receiver.next().await? {
            Frame::Hello { version, .. } if version == PROTOCOL_VERSION => {}
            Frame::Hello { version, .. } => {
                return Err(LinkError::Version {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                });
            }
            Frame::Refused { reason } => return Err(LinkError::Refused(reason)),
            other => return Err(unexpected("Hello", &other)),
        }
        let nonce = match receiver.next().await? {
            Frame::Challenge { nonce } => nonce,
            Frame::Refused { reason } => return Err(LinkError::Refused(reason)),
            other => return Err(unexpected("Challenge", &other)),
        };
        let proof = auth::prove(secret, &nonce, &registration.node);
        sender
            .send(&Frame::Register {
                registration,
                proof,
            })
            .await?;
        match receiver.next().await? {
            Frame::Registered => Ok(Established { sender, receiver }),
            Frame::Refused { reason } => Err(LinkError::Refused(reason)),
            other => Err(unexpected("Registered", &other)),
        }
    })
    .await
}

/// Control side: accept the node's API stream, check its version and proof, and let
/// `admit` decide (e.g. refuse an id that a live node holds). On any refusal the node is told
/// why before the error is returned.
pub async fn accept(
    connection: &quinn::Connection,
    secret: &[u8],
    admit: impl FnOnce(&Registration) -> Result<(), String>,
) -> Result<(Registration, Established), LinkError> {
    bounded(async {
        let (send, recv) = connection.accept_bi().await?;
        let (mut sender, mut receiver) = (FrameSender::new(send), FrameReceiver::new(recv));
        let claimed = match receiver.next().await? {
            Frame::Hello { version, node } if version == PROTOCOL_VERSION => node,
            Frame::Hello { version, .. } => {
                let reason = format!(
                    "protocol version {version} is not supported; control speaks {PROTOCOL_VERSION}"
                );
                refuse(&mut sender, &reason).await;
                return Err(LinkError::Version {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                });
            }
            other => return Err(unexpected("Hello", &other)),
        };
        sender
            .send(&Frame::Hello {
                version: PROTOCOL_VERSION,
                node: None,
            })
            .await?;
        let nonce = auth::challenge();
        sender.send(&Frame::Challenge { nonce }).await?;
        let (registration, proof) = match receiver.next().await? {
            Frame::Register {
                registration,
                proof,
            } => (registration, proof),
            other => return Err(unexpected("Register", &other)),
        };
        if claimed.as_ref() != Some(&registration.node) {
            let reason = "the registration names another node than the hello".to_string();
            refuse(&mut sender, &reason).await;
            return Err(LinkError::Refused(reason));
        }
        if !auth::verify(secret, &nonce, &registration.node, &proof) {
            let reason = "wrong cluster secret".to_string();
            refuse(&mut sender, &reason).await;
            return Err(LinkError::Refused(reason));
        }
        if let Err(reason) = admit(&registration) {
            refuse(&mut sender, &reason).await;
            return Err(LinkError::Refused(reason));
        }
        sender.send(&Frame::Registered).await?;
        Ok((registration, Established { sender, receiver }))
    })
    .await
}

async fn refuse(sender: &mut FrameSender, reason: &str) {
    let _ = sender
        .send(&Frame::Refused {
            reason: reason.to_string(),
        })
        .await;
    sender.finish();
}

fn unexpected(wanted: &str, got: &Frame) -> LinkError {
    let name = match got {
        Frame::Hello { .. } => "Hello",
        Frame::Challenge { .. } => "Challenge",
        Frame::Register { .. } => "Register",
        Frame::Registered => "Registered",
        Frame::Refused { .. } => "Refused",
        Frame::Request { .. } => "Request",
        Frame::Response { .. } => "Response",
        Frame::Event(_) => "Event",
    };
    LinkError::Protocol(format!("expected {wanted}, got {name}"))
}

async fn bounded<T>(work: impl Future<Output = Result<T, LinkError>>) -> Result<T, LinkError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .unwrap_or(Err(LinkError::Timeout(HANDSHAKE_TIMEOUT)))
}
