//! Each worker's inbound ring from the other workers: bounded and lock-free
//! (`crossbeam::queue::ArrayQueue`). A publisher's worker pushes one reference per packet per
//! *interested worker*, not per subscriber; a full ring drops and counts, it never blocks.

use crossbeam::queue::ArrayQueue;

pub use crate::engine::CrossWorker;
use crate::io::Waker;

/// A worker's inbound ring plus the means to wake it.
#[derive(Debug)]
pub struct Mailbox {
    ring: ArrayQueue<CrossWorker>,
    waker: Waker,
}

impl Mailbox {
    pub fn new(capacity: usize, waker: Waker) -> Self {
        Self {
            ring: ArrayQueue::new(capacity),
            waker,
        }
    }

    /// Push without waking; the producer wakes once per loop pass with [`Mailbox::wake`].
    /// Returns the message back when the ring is full.
    pub fn push(&self, msg: CrossWorker) -> Result<(), CrossWorker> {
        self.ring.push(msg)
    }

    pub fn pop(&self) -> Option<CrossWorker> {
        self.ring.pop()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    pub fn wake(&self) {
        self.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use sfu_proto::{Layer, SessionId, TrackId};

    use super::*;

    #[test]
    fn a_full_ring_hands_the_message_back_instead_of_blocking() {
        let waker = Waker::new().expect("eventfd");
        let mailbox = Mailbox::new(2, waker);
        let request = |n| CrossWorker::KeyframeRequest {
            track: TrackId {
                session: SessionId::from_u128(n),
                index: 0,
            },
            layer: Layer(0),
        };
        assert!(mailbox.push(request(1)).is_ok());
        assert!(mailbox.push(request(2)).is_ok());
        match mailbox.push(request(3)) {
            Err(CrossWorker::KeyframeRequest { track, .. }) => {
                assert_eq!(track.session, SessionId::from_u128(3))
            }
            other => panic!("expected the message back, got {other:?}"),
        }
        assert!(matches!(
            mailbox.pop(),
            Some(CrossWorker::KeyframeRequest { track, .. }) if track.session == SessionId::from_u128(1)
        ));
        assert!(mailbox.push(request(4)).is_ok());
    }
}
