//! A synthetic peer's session on the server, opened and ended the same way by
//! [`Publisher`](crate::Publisher) and [`Subscriber`](crate::Subscriber): the WHIP/WHEP offer,
//! the answer applied to the peer's `Rtc`, and the `DELETE` at the end.

use str0m::Rtc;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};

use crate::Error;
use crate::whip::{Endpoint, SessionResource, SignalingClient};

/// A session the server created for one peer, and how to end it.
#[derive(Debug)]
pub(crate) struct ServerSession {
    signaling: SignalingClient,
    token: String,
    resource: SessionResource,
    deleted: bool,
}

impl ServerSession {
    /// POSTs `offer` (what `SdpApi::apply` returned; `None`: nothing to offer) to `endpoint`,
    /// applies the answer to `rtc` and hands the result to `check` (e.g. to read what the
    /// answer accepted). If the answer or `check` fails, the session is deleted again.
    pub(crate) fn open<T>(
        endpoint: Endpoint,
        base_url: &str,
        room: &str,
        token: &str,
        rtc: &mut Rtc,
        offer: Option<(SdpOffer, SdpPendingOffer)>,
        check: impl FnOnce(&Rtc) -> Result<T, Error>,
    ) -> Result<(Self, T), Error> {
        let (offer, pending) =
            offer.ok_or_else(|| Error::Sdp("nothing to offer: no audio and no video".into()))?;
        let signaling = SignalingClient::new(base_url);
        let resource = signaling.offer(endpoint, room, token, &offer.to_sdp_string())?;
        let accepted = SdpAnswer::from_sdp_string(&resource.answer)
            .map_err(|e| Error::Sdp(format!("answer does not parse: {e}")))
            .and_then(|answer| Ok(rtc.sdp_api().accept_answer(pending, answer)?))
            .and_then(|()| check(rtc));
        match accepted {
            Ok(checked) => {
                let session = Self {
                    signaling,
                    token: token.to_string(),
                    resource,
                    deleted: false,
                };
                Ok((session, checked))
            }
            Err(e) => {
                // Best effort: do not leave a half-made session behind on the server.
                let _ = signaling.delete(&resource.location, token);
                Err(e)
            }
        }
    }

    /// The session URL the server returned.
    pub(crate) fn location(&self) -> &str {
        &self.resource.location
    }

    /// The SDP answer.
    pub(crate) fn answer(&self) -> &str {
        &self.resource.answer
    }

    /// Ends the session on the server (`DELETE {Location}`). Only the first call asks the
    /// server; later ones do nothing.
    pub(crate) fn delete(&mut self) -> Result<(), Error> {
        if !self.deleted {
            self.deleted = true;
            self.signaling
                .delete(&self.resource.location, &self.token)?;
        }
        Ok(())
    }
}
