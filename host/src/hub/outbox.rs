//! One connection's queue of outgoing frames, bounded in bytes: a client
//! that stops reading costs the process at most its bound (plus the one
//! frame that crossed it), however large or small the frames are.

use super::Frame;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What one queued frame costs besides its text (the `Arc`, the queue slot).
const FRAME_OVERHEAD: usize = 64;

fn cost(frame: &Frame) -> usize {
    frame.len() + FRAME_OVERHEAD
}

/// The queue both ends share. Deliberately small: an idle connection holds
/// one of these (about a hundred bytes, no buffer until frames arrive).
#[derive(Default)]
struct Queue {
    frames: Mutex<VecDeque<Frame>>,
    /// Bytes queued (frame text plus per-frame overhead).
    queued: AtomicUsize,
    /// The hub's end is gone: after the queued frames, nothing more comes.
    closed: AtomicBool,
    /// Frames arrived (or the queue closed); one waiter, the connection.
    ready: Notify,
}

impl Queue {
    fn pop(&self) -> Option<Frame> {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let frame = frames.pop_front()?;
        // A burst's worth of slots is not kept for an idle connection.
        if frames.is_empty() && frames.capacity() > 64 {
            frames.shrink_to(8);
        }
        self.queued.fetch_sub(cost(&frame), Ordering::AcqRel);
        Some(frame)
    }
}

/// The hub's end: refuses a frame that would take the queue past its bound.
/// Dropping it closes the queue.
pub(super) struct Inbox {
    queue: Arc<Queue>,
    limit: usize,
}

/// The connection's end: frames to write to the socket, in order. Ends
/// (`None`) when the hub cut the connection off or forgot it.
pub struct Outbox {
    queue: Arc<Queue>,
}

/// A queue holding at most `limit` bytes of frames. An empty queue always
/// accepts one frame, so a frame larger than the bound still goes out.
pub(super) fn channel(limit: usize) -> (Inbox, Outbox) {
    let queue = Arc::new(Queue::default());
    (Inbox { queue: queue.clone(), limit }, Outbox { queue })
}

impl Inbox {
    /// Queue the frame; false if it does not fit or the connection is gone.
    pub(super) fn push(&self, frame: &Frame) -> bool {
        if Arc::strong_count(&self.queue) == 1 {
            return false; // the connection dropped its end
        }
        let cost = cost(frame);
        let before = self.queue.queued.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before + cost > self.limit {
            self.queue.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        self.queue.frames.lock().unwrap_or_else(|p| p.into_inner()).push_back(frame.clone());
        self.queue.ready.notify_one();
        true
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.ready.notify_one();
    }
}

impl Outbox {
    /// The next frame, waiting for one.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.queue.pop() {
                return Some(frame);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                // Frames pushed before the close still go out.
                return self.queue.pop();
            }
            // A notification sent since the checks above is kept as a permit.
            self.queue.ready.notified().await;
        }
    }

    /// The next frame if one is queued now.
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.queue.pop()
    }

    /// Bytes waiting (frame text plus per-frame overhead).
    pub fn queued_bytes(&self) -> usize {
        self.queue.queued.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_not_frames() {
        let (inbox, mut outbox) = channel(1000);
        let small: Frame = "x".repeat(100).into();
        let pushed = (0..100).take_while(|_| inbox.push(&small)).count();
        assert_eq!(pushed, 1000 / (100 + FRAME_OVERHEAD));
        assert!(outbox.queued_bytes() <= 1000);
        while outbox.try_recv().is_some() {}
        assert_eq!(outbox.queued_bytes(), 0);
        // An empty queue takes one frame over the bound, and nothing after it.
        let huge: Frame = "y".repeat(5000).into();
        assert!(inbox.push(&huge));
        assert!(!inbox.push(&small));
    }

    #[tokio::test]
    async fn frames_queued_before_a_close_still_arrive() {
        let (inbox, mut outbox) = channel(1000);
        let frame: Frame = "last words".into();
        assert!(inbox.push(&frame));
        drop(inbox);
        assert_eq!(outbox.recv().await.as_deref(), Some("last words"));
        assert_eq!(outbox.recv().await, None);
        // And a dropped connection end refuses frames.
        let (inbox, outbox) = channel(1000);
        drop(outbox);
        assert!(!inbox.push(&frame));
    }
}
