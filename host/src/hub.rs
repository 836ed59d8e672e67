//! A ready-made [`Platform`]: a registry of local connections, each with a
//! bounded queue of outgoing text frames and a set of subscribed topics.
//!
//! A server (ours, or an embedding application's) registers each connection
//! with [`Hub::connect`], writes what arrives on the returned receiver to its
//! socket, and calls [`Hub::disconnect`] when it closes. A connection whose
//! queue is full is cut off (its receiver ends): a slow client can never make
//! the process buffer without bound.

use crate::engine::{ConnId, Envelope, Platform};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// One outgoing text frame, shared by every receiver of a broadcast.
pub type Frame = Arc<str>;

#[derive(Default)]
pub struct Hub {
    state: Mutex<HubState>,
    next_id: AtomicU64,
    /// Connections cut off because their queue was full.
    overflows: AtomicU64,
}

#[derive(Default)]
struct HubState {
    conns: HashMap<ConnId, Conn>,
    topics: HashMap<String, HashSet<ConnId>>,
}

struct Conn {
    user_data: Value,
    tx: mpsc::Sender<Frame>,
    topics: HashSet<String>,
}

impl HubState {
    fn remove(&mut self, conn: ConnId) -> bool {
        let Some(entry) = self.conns.remove(&conn) else {
            return false;
        };
        for topic in entry.topics {
            if let Some(members) = self.topics.get_mut(&topic) {
                members.remove(&conn);
                if members.is_empty() {
                    self.topics.remove(&topic);
                }
            }
        }
        true
    }

    /// Queue a frame; a full or closed queue cuts the connection off.
    fn deliver(&mut self, conn: ConnId, frame: &Frame) -> bool {
        let ok = self.conns.get(&conn).is_some_and(|c| c.tx.try_send(frame.clone()).is_ok());
        if !ok {
            self.remove(conn);
        }
        ok
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Register a connection; frames for it arrive on the receiver, at most
    /// `queue` of them waiting.
    pub fn connect(&self, user_data: Value, queue: usize) -> (ConnId, mpsc::Receiver<Frame>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(queue.max(1));
        self.lock().conns.insert(id, Conn { user_data, tx, topics: HashSet::new() });
        (id, rx)
    }

    /// Forget a connection and its subscriptions.
    pub fn disconnect(&self, conn: ConnId) {
        self.lock().remove(conn);
    }

    /// Queue a raw text frame for one connection (e.g. a protocol error).
    pub fn send_text(&self, conn: ConnId, text: impl Into<Frame>) -> bool {
        let frame = text.into();
        let mut state = self.lock();
        let ok = state.deliver(conn, &frame);
        if !ok {
            self.overflows.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    pub fn set_user_data(&self, conn: ConnId, user_data: Value) {
        if let Some(entry) = self.lock().conns.get_mut(&conn) {
            entry.user_data = user_data;
        }
    }

    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn subscribers(&self, topic: &str) -> usize {
        self.lock().topics.get(topic).map_or(0, HashSet::len)
    }

    pub fn is_subscribed(&self, conn: ConnId, topic: &str) -> bool {
        self.lock().conns.get(&conn).is_some_and(|c| c.topics.contains(topic))
    }

    /// How many connections were cut off for not reading fast enough.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

impl Platform for Hub {
    fn user_data(&self, conn: ConnId) -> Option<Value> {
        self.lock().conns.get(&conn).map(|c| c.user_data.clone())
    }

    fn subscribe(&self, conn: ConnId, topic: &str) {
        let mut state = self.lock();
        if let Some(entry) = state.conns.get_mut(&conn) {
            entry.topics.insert(topic.to_owned());
            state.topics.entry(topic.to_owned()).or_default().insert(conn);
        }
    }

    fn unsubscribe(&self, conn: ConnId, topic: &str) {
        let mut state = self.lock();
        if let Some(entry) = state.conns.get_mut(&conn) {
            entry.topics.remove(topic);
        }
        if let Some(members) = state.topics.get_mut(topic) {
            members.remove(&conn);
            if members.is_empty() {
                state.topics.remove(topic);
            }
        }
    }

    fn send(&self, conn: ConnId, envelope: &Envelope) {
        self.send_text(conn, envelope.to_json());
    }

    fn publish(&self, topic: &str, envelope: &Envelope) {
        let mut state = self.lock();
        let Some(members) = state.topics.get(topic) else {
            return;
        };
        let members: Vec<ConnId> = members.iter().copied().collect();
        let frame: Frame = envelope.to_json().into();
        for conn in members {
            if !state.deliver(conn, &frame) {
                self.overflows.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn is_open(&self, conn: ConnId) -> bool {
        self.lock().conns.contains_key(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A connection that does not drain its queue is cut off once the queue
    /// is full; the others keep receiving.
    #[test]
    fn slow_connections_are_cut_off_not_buffered() {
        let hub = Hub::new();
        let (slow, mut slow_rx) = hub.connect(json!({}), 2);
        let (fast, mut fast_rx) = hub.connect(json!({}), 2);
        hub.subscribe(slow, "t");
        hub.subscribe(fast, "t");
        let envelope = Envelope::new("t", "e", serde_json::value::RawValue::from_string("1".into()).unwrap());
        for _ in 0..3 {
            hub.publish("t", &envelope);
            assert!(fast_rx.try_recv().is_ok());
        }
        assert!(!hub.is_open(slow));
        assert_eq!(hub.overflows(), 1);
        assert!(slow_rx.try_recv().is_ok() && slow_rx.try_recv().is_ok());
        assert!(slow_rx.try_recv().is_err(), "nothing beyond the queue, and the queue is closed");
        assert!(hub.is_open(fast));
    }
}
