//! One connection's queue of outgoing frames, bounded in bytes: a client
//! that stops reading costs the process at most its bound (plus the one
//! frame that crossed it), however large or small the frames are.
//!
//! A topic's state (a joiner's `list` or `presence_state`) is the exception:
//! it is shared with every other receiver of it, so while it is the topic's
//! only state waiting it does not count against the bound (a joiner's first
//! list always fits, however big the room, and the frames after it too); a
//! second state of the same topic counts like any other frame.

use super::Frame;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What one queued frame costs besides its text (the `Arc`, the queue slot).
const FRAME_OVERHEAD: usize = 64;

/// A frame in the queue, with what it counts against the bound.
struct Queued {
    frame: Frame,
    cost: usize,
    /// `Some(topic)`: the topic's state (shared, counted as its overhead).
    state_of: Option<String>,
}

/// The queue both ends share. Deliberately small: an idle connection holds
/// one of these (about a hundred bytes, no buffer until frames arrive).
#[derive(Default)]
struct Queue {
    frames: Mutex<VecDeque<Queued>>,
    /// Bytes queued (frame text plus per-frame overhead; a state's overhead only).
    queued: AtomicUsize,
    /// The hub's end is gone: after the queued frames, nothing more comes.
    closed: AtomicBool,
    /// Why the hub closed it, when it was not for a full queue.
    close_reason: Mutex<Option<String>>,
    /// Frames arrived (or the queue closed); one waiter, the connection.
    ready: Notify,
}

impl Queue {
    fn frames(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop(&self) -> Option<Frame> {
        let mut frames = self.frames();
        let queued = frames.pop_front()?;
        // A burst's worth of slots is not kept for an idle connection.
        if frames.is_empty() && frames.capacity() > 64 {
            frames.shrink_to(8);
        }
        self.queued.fetch_sub(queued.cost, Ordering::AcqRel);
        Some(queued.frame)
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
        let cost = frame.len() + FRAME_OVERHEAD;
        let before = self.queue.queued.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before + cost > self.limit {
            self.queue.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        self.queue.frames().push_back(Queued { frame: frame.clone(), cost, state_of: None });
        self.queue.ready.notify_one();
        true
    }

    /// Queue `topic`'s state: outside the bound when it is the topic's only
    /// state waiting (shared, so a joiner's first list always fits), like any
    /// other frame when another state of the topic still waits (so a client
    /// that does not read cannot pile them up). False if it does not fit or
    /// the connection is gone.
    pub(super) fn push_state(&self, topic: &str, frame: &Frame) -> bool {
        if Arc::strong_count(&self.queue) == 1 {
            return false;
        }
        let mut frames = self.queue.frames();
        if frames.iter().any(|q| q.state_of.as_deref() == Some(topic)) {
            drop(frames);
            return self.push(frame);
        }
        self.queue.queued.fetch_add(FRAME_OVERHEAD, Ordering::AcqRel);
        frames.push_back(Queued { frame: frame.clone(), cost: FRAME_OVERHEAD, state_of: Some(topic.to_owned()) });
        drop(frames);
        self.queue.ready.notify_one();
        true
    }

    /// Say why the connection is being closed (before the hub drops it).
    pub(super) fn close_with(&self, reason: &str) {
        *self.queue.close_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
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

    /// Once [`Outbox::recv`] ended: why the hub closed the connection, if it
    /// said (`None`: the client did not read fast enough).
    pub fn close_reason(&self) -> Option<String> {
        self.queue.close_reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

    /// A topic's state fits whatever its size and the frames after it too;
    /// a second state of the same topic waiting counts against the bound.
    #[test]
    fn a_first_state_is_outside_the_bound() {
        let (inbox, mut outbox) = channel(1000);
        let small: Frame = "x".repeat(100).into();
        let state: Frame = "s".repeat(100_000).into();
        assert!(inbox.push(&small));
        assert!(inbox.push_state("t", &state), "a big state fits behind other frames");
        assert!(inbox.push(&small), "and so do the frames after it");
        assert!(inbox.push_state("u", &state), "another topic's state too");
        assert!(!inbox.push_state("t", &state), "a second one of t does not fit");
        let sent: Vec<usize> = std::iter::from_fn(|| outbox.try_recv()).map(|f| f.len()).collect();
        assert_eq!(sent, [100, 100_000, 100, 100_000]);
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(inbox.push_state("t", &state), "once sent, the next state is a first one again");
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
