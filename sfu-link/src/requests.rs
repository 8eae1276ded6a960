//! Both ends' plumbing after the handshake: one writer task per link that sends queued frames
//! in order, and, on the calling side, request ids matched to their responses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sfu_proto::{Frame, NodeError, NodeRequest, NodeResponse, RequestId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::LinkError;
use crate::stream::FrameSender;

/// Frames waiting for a link's writer. Senders wait when it is full (back-pressure), they
/// are never dropped.
pub const OUTBOX: usize = 1024;

/// A request not answered in this time fails (the node may still act on it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Start the task that writes `outbox`'s frames to `sender`, in order, until every sender of
/// the outbox is gone or the link fails.
pub fn spawn_writer(mut sender: FrameSender) -> (mpsc::Sender<Frame>, JoinHandle<LinkError>) {
    let (tx, mut rx) = mpsc::channel::<Frame>(OUTBOX);
    let task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = sender.send(&frame).await {
                return e;
            }
        }
        sender.finish();
        LinkError::Closed
    });
    (tx, task)
}

/// The calling side of a link: sends requests with fresh ids and hands each response to the
/// caller that waits for it.
#[derive(Debug)]
pub struct Requests {
    next: AtomicU64,
    pending: Mutex<HashMap<RequestId, oneshot::Sender<NodeResponse>>>,
    outbox: mpsc::Sender<Frame>,
}

impl Requests {
    pub fn new(outbox: mpsc::Sender<Frame>) -> Self {
        Self {
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            outbox,
        }
    }

    /// Send `request` and wait for its response. A lost link or no answer within
    /// [`CALL_TIMEOUT`] is `NodeError::Stopped`.
    pub async fn call(&self, request: NodeRequest) -> NodeResponse {
        let id = RequestId(self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, tx);
        if self
            .outbox
            .send(Frame::Request { id, request })
            .await
            .is_err()
        {
            self.pending().remove(&id);
            return NodeResponse::Error(NodeError::Stopped);
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => NodeResponse::Error(NodeError::Stopped),
            Err(_) => {
                self.pending().remove(&id);
                NodeResponse::Error(NodeError::Stopped)
            }
        }
    }

    /// A response arrived. False when no caller waits for `id` (late or unknown).
    pub fn answer(&self, id: RequestId, response: NodeResponse) -> bool {
        match self.pending().remove(&id) {
            Some(tx) => tx.send(response).is_ok(),
            None => false,
        }
    }

    /// The link is gone: every waiting caller gets `NodeError::Stopped` now.
    pub fn fail_all(&self) {
        self.pending().clear();
    }

    /// Requests waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.pending().len()
    }

    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RequestId, oneshot::Sender<NodeResponse>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_reach_their_callers_and_a_lost_link_fails_the_rest() {
        let (tx, mut rx) = mpsc::channel(8);
        let requests = std::sync::Arc::new(Requests::new(tx));
        let a = tokio::spawn({
            let r = requests.clone();
            async move { r.call(NodeRequest::Stats).await }
        });
        let b = tokio::spawn({
            let r = requests.clone();
            async move { r.call(NodeRequest::Health).await }
        });
        let mut ids = Vec::new();
        for _ in 0..2 {
            match rx.recv().await {
                Some(Frame::Request { id, request }) => ids.push((id, request)),
                other => panic!("expected a request, got {other:?}"),
            }
        }
        let (stats_id, _) = ids
            .iter()
            .find(|(_, r)| matches!(r, NodeRequest::Stats))
            .expect("stats request sent");
        assert!(requests.answer(*stats_id, NodeResponse::Done));
        assert!(!requests.answer(RequestId(9999), NodeResponse::Done));
        assert_eq!(a.await.expect("task"), NodeResponse::Done);
        requests.fail_all();
        assert_eq!(
            b.await.expect("task"),
            NodeResponse::Error(NodeError::Stopped)
        );
        assert_eq!(requests.waiting(), 0);
    }
}
