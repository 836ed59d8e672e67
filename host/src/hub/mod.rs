//! A ready-made [`Platform`]: a registry of local connections, each with a
//! queue of outgoing text frames bounded in bytes ([`Outbox`]) and a set of
//! subscribed topics.
//!
//! A server (ours, or an embedding application's) registers each connection
//! with [`Hub::connect`], writes what arrives on the returned receiver to its
//! socket, and calls [`Hub::disconnect`] when it closes. A connection whose
//! queue is full is cut off (its receiver ends): a slow client can never make
//! the process buffer without bound.
//!
//! Connections speak one of two client generations. Legacy ones (0.3/0.4)
//! get the engine's envelopes as they are. Current ones (0.5, marked with
//! [`Hub::set_current`]) get presence as `presence_state` and coalesced
//! `presence_diff` frames (`current`): changes to a topic are collected
//! and, once per diff window, sent as one frame shared by every current
//! subscriber, while [`Hub::run_diffs`] runs.

mod current;
mod frame;
mod outbox;

pub use frame::Frame;

pub use outbox::Outbox;

use crate::engine::{presence_topic, ConnId, Envelope, Members, Platform, PRESENCE_PREFIX};
use current::Diff;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// The ready [`crate::Platform`]: connections with byte-bounded send queues,
/// their user data, and topic subscriptions.
///
/// ```
/// use presence::{Envelope, Hub, Platform};
///
/// let hub = Hub::new();
/// // A connection, with at most 64 KiB of frames waiting for its socket.
/// let (conn, mut frames) = hub.connect(serde_json::json!({"id": "ada"}), 64 << 10);
/// hub.subscribe(conn, "chat");
/// let data = serde_json::value::RawValue::from_string("\"hi\"".into()).unwrap();
/// hub.publish("chat", &Envelope::new("chat", "message", data));
/// assert_eq!(frames.try_recv().as_deref(), Some(r#"{"topic":"chat","event":"message","data":"hi"}"#));
/// hub.disconnect(conn);
/// assert!(!hub.is_open(conn));
/// ```
#[derive(Default)]
pub struct Hub {
    state: Mutex<HubState>,
    next_id: AtomicU64,
    /// Connections cut off because their queue was full.
    overflows: AtomicU64,
    /// Diffs are waiting for a flush.
    diffs_waiting: Arc<Notify>,
    /// Frames sent, for measuring (one per queued frame, batch = one).
    frames_sent: AtomicU64,
}

#[derive(Default)]
struct HubState {
    conns: HashMap<ConnId, Conn>,
    topics: HashMap<String, HashSet<ConnId>>,
    /// `__presence:T` → changes since the last flush, for current subscribers
    /// (with the states held back for it).
    diffs: HashMap<String, Diff>,
    /// `__presence:T` → sequence number of its last presence frame.
    seqs: HashMap<String, u64>,
    /// `__presence:T` → the `presence_state` current joiners get, shared,
    /// with the changes since it was built (see `current::Base`).
    states: HashMap<String, current::Base>,
    /// `__presence:T` → the legacy `list` frame of one version of the
    /// members, shared by every legacy joiner of that version.
    lists: HashMap<String, (u64, Frame)>,
}

struct Conn {
    /// As JSON text, shared with whoever serves the connection: one small
    /// copy per connection (a parsed map costs over half a kilobyte), parsed
    /// when the engine asks for it, handed to plugins as it is.
    user_data: Arc<str>,
    queue: outbox::Inbox,
    topics: HashSet<String>,
    current: Option<Current>,
}

/// A current (0.5) client's capabilities, from its `hello`.
#[derive(Debug, Clone, Copy, Default)]
struct Current {
    /// Several frames of one flush may arrive as one `batch` frame.
    batch: bool,
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
                    self.forget_topic(&topic);
                }
            }
        }
        true
    }

    /// Queue a frame; a full or closed queue cuts the connection off.
    fn deliver(&mut self, conn: ConnId, frame: &Frame) -> bool {
        let ok = self.conns.get(&conn).is_some_and(|c| c.queue.push(frame));
        if !ok {
            self.remove(conn);
        }
        ok
    }

    /// Queue a topic's state (outside the byte bound, one per topic).
    fn deliver_state(&mut self, conn: ConnId, presence_topic: &str, frame: &Frame) -> bool {
        let ok = self.conns.get(&conn).is_some_and(|c| c.queue.push_state(presence_topic, frame));
        if !ok {
            self.remove(conn);
        }
        ok
    }

    /// What a current joiner of `presence_topic` gets now: the topic's shared
    /// state, and the changes since it was built (built again once those
    /// are many).
    fn current_state(&mut self, presence_topic: &str, members: &Members<'_>) -> (Frame, Option<Frame>) {
        let seq = self.seqs.get(presence_topic).copied().unwrap_or(0);
        let stale = self.states.get(presence_topic).is_none_or(|base| base.is_stale(members.len()));
        if stale {
            let base = current::Base::new(current::state_frame(presence_topic, members, seq));
            self.states.insert(presence_topic.to_owned(), base);
        }
        let base = self.states.get_mut(presence_topic).expect("just made");
        (base.frame.clone(), base.since_frame(presence_topic, seq))
    }

    /// The legacy `list` frame of this version of the members.
    fn legacy_list(&mut self, presence_topic: &str, members: &Members<'_>) -> Frame {
        if let Some((version, frame)) = self.lists.get(presence_topic) {
            if *version == members.version() {
                return frame.clone();
            }
        }
        let frame = legacy_list_frame(presence_topic, members.list_json());
        self.lists.insert(presence_topic.to_owned(), (members.version(), frame.clone()));
        frame
    }

    /// A topic nobody here subscribes to any more: forget it, its sequence
    /// number, any waiting diff and shared states, so the hub does not grow
    /// with every topic it ever served.
    fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
        self.seqs.remove(topic);
        self.diffs.remove(topic);
        self.states.remove(topic);
        self.lists.remove(topic);
    }

    fn is_subscribed(&self, conn: ConnId, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|members| members.contains(&conn))
    }

    fn next_seq(&mut self, presence_topic: &str) -> u64 {
        let seq = self.seqs.entry(presence_topic.to_owned()).or_default();
        *seq += 1;
        *seq
    }

    fn is_current(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.current.is_some())
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Register a connection; frames for it arrive on the [`Outbox`], at
    /// most `queue_bytes` of them waiting before the connection is cut off.
    pub fn connect(&self, user_data: Value, queue_bytes: usize) -> (ConnId, Outbox) {
        let id = ConnId::new(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let (queue, outbox) = outbox::channel(queue_bytes);
        let user_data = user_data.to_string().into();
        self.lock().conns.insert(id, Conn { user_data, queue, topics: HashSet::new(), current: None });
        (id, outbox)
    }

    /// Mark a connection as a current (0.5) client: from now on it gets
    /// presence as `presence_state` / `presence_diff`, batched if `batch`.
    pub fn set_current(&self, conn: ConnId, batch: bool) {
        if let Some(entry) = self.lock().conns.get_mut(&conn) {
            entry.current = Some(Current { batch });
        }
    }

    /// Flush waiting diffs every `window` after the first change (0: as soon
    /// as this task runs again). Runs until the hub is dropped.
    pub async fn run_diffs(self: Arc<Self>, window: Duration) {
        let (hub, waiting) = (Arc::downgrade(&self), self.diffs_waiting.clone());
        drop(self); // the task must not keep the hub alive
        crate::window::flush_after_window(hub, waiting, window, Hub::flush_diffs).await
    }

    /// Send every waiting diff now: one frame per topic, shared by its
    /// current subscribers; a connection that asked for batches gets all its
    /// frames of this flush as one.
    pub fn flush_diffs(&self) {
        let mut state = self.lock();
        let diffs = std::mem::take(&mut state.diffs);
        let mut outgoing: HashMap<ConnId, Vec<Frame>> = HashMap::new();
        let mut held = Vec::new();
        for (topic, mut diff) in diffs {
            // Each held-back state ahead of the diff that follows it, on its
            // own (shared, so never copied into a batch), with the changes
            // since that state was built.
            for (conn, frame, since) in std::mem::take(&mut diff.held_states) {
                if state.is_subscribed(conn, &topic) {
                    held.push((conn, topic.clone(), frame, since));
                }
            }
            if diff.is_empty() {
                continue;
            }
            let Some(members) = state.topics.get(&topic) else { continue };
            let members: Vec<ConnId> = members.iter().copied().filter(|c| state.is_current(*c)).collect();
            if members.is_empty() {
                continue;
            }
            let seq = state.next_seq(&topic);
            let frame = diff.frame(&topic, seq);
            for conn in members {
                outgoing.entry(conn).or_default().push(frame.clone());
            }
        }
        for (conn, topic, frame, since) in held {
            self.count_state_delivery(&mut state, conn, &topic, &frame);
            if let Some(since) = since {
                self.count_delivery(&mut state, conn, &since);
            }
        }
        for (conn, frames) in outgoing {
            let batch = state.conns.get(&conn).and_then(|c| c.current).is_some_and(|c| c.batch);
            let frames: Vec<Frame> =
                if batch && frames.len() > 1 { vec![current::batch_frame(&frames).into()] } else { frames };
            for frame in frames {
                self.count_delivery(&mut state, conn, &frame);
            }
        }
    }

    /// Queue a frame and count it; false if the connection was cut off.
    fn count_delivery(&self, state: &mut HubState, conn: ConnId, frame: &Frame) -> bool {
        let delivered = state.deliver(conn, frame);
        let counter = if delivered { &self.frames_sent } else { &self.overflows };
        counter.fetch_add(1, Ordering::Relaxed);
        delivered
    }

    /// Queue a topic's state and count it.
    fn count_state_delivery(&self, state: &mut HubState, conn: ConnId, presence_topic: &str, frame: &Frame) {
        if state.deliver_state(conn, presence_topic, frame) {
            self.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frames queued for connections so far.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(Ordering::Relaxed)
    }

    /// Forget a connection and its subscriptions.
    pub fn disconnect(&self, conn: ConnId) {
        self.lock().remove(conn);
    }

    /// Close a connection for `reason`: its [`Outbox`] ends after the frames
    /// already queued, and [`Outbox::close_reason`] says why (whoever serves
    /// it closes the socket with 1013, which clients retry).
    pub fn close(&self, conn: ConnId, reason: &str) {
        let mut state = self.lock();
        if let Some(entry) = state.conns.get(&conn) {
            entry.queue.close_with(reason);
        }
        state.remove(conn);
    }

    /// Queue a raw text frame for one connection (e.g. a protocol error).
    pub fn send_text(&self, conn: ConnId, text: impl Into<Frame>) -> bool {
        self.count_delivery(&mut self.lock(), conn, &text.into())
    }

    /// Replace a connection's user data.
    pub fn set_user_data(&self, conn: ConnId, user_data: Value) {
        if let Some(entry) = self.lock().conns.get_mut(&conn) {
            entry.user_data = user_data.to_string().into();
        }
    }

    /// A connection's user data as JSON text (shared, not copied).
    pub fn user_data_json(&self, conn: ConnId) -> Option<Arc<str>> {
        self.lock().conns.get(&conn).map(|c| c.user_data.clone())
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Connections subscribed to `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.lock().topics.get(topic).map_or(0, HashSet::len)
    }

    /// Whether `conn` is subscribed to `topic`.
    pub fn is_subscribed(&self, conn: ConnId, topic: &str) -> bool {
        self.lock().conns.get(&conn).is_some_and(|c| c.topics.contains(topic))
    }

    /// How many connections were cut off for not reading fast enough.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

/// `{"topic":…,"event":"list","data":[…]}`, as `Envelope::to_json` writes it.
fn legacy_list_frame(presence_topic: &str, members_json: &str) -> Frame {
    let topic = serde_json::to_string(presence_topic).expect("strings serialise");
    frame::joined(&[r#"{"topic":"#, &topic, r#","event":"list","data":"#, members_json, "}"])
}

impl Platform for Hub {
    fn user_data(&self, conn: ConnId) -> Option<Value> {
        let text = self.lock().conns.get(&conn).map(|c| c.user_data.clone())?;
        Some(serde_json::from_str(&text).expect("the hub stores serialized JSON"))
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
                state.forget_topic(topic);
            }
        }
    }

    /// Members serialized by the engine: one copy into the connection's
    /// frame, a `presence_state` for a current connection. A current
    /// subscriber's state waits for the topic's waiting diff, if there is
    /// one (at most a diff window), and goes out with it.
    fn send_list(&self, conn: ConnId, topic: &str, members: &Members<'_>) {
        let presence = presence_topic(topic);
        let mut state = self.lock();
        if !state.is_current(conn) {
            let frame = state.legacy_list(&presence, members);
            self.count_state_delivery(&mut state, conn, &presence, &frame);
            return;
        }
        let (frame, since) = state.current_state(&presence, members);
        let subscribed = state.is_subscribed(conn, &presence);
        match state.diffs.get_mut(&presence).filter(|diff| subscribed && !diff.is_empty()) {
            Some(diff) => diff.held_states.push((conn, frame, since)),
            None => {
                self.count_state_delivery(&mut state, conn, &presence, &frame);
                if let Some(since) = since {
                    self.count_delivery(&mut state, conn, &since);
                }
            }
        }
    }

    /// Members replacing what every subscriber of the topic's presence lists:
    /// a `list` for legacy connections, a `presence_state` for current ones,
    /// whose waiting diff it supersedes.
    fn publish_list(&self, topic: &str, members: &Members<'_>) {
        let presence = presence_topic(topic);
        let mut state = self.lock();
        let Some(subscribers) = state.topics.get(&presence) else { return };
        let (current, legacy): (Vec<ConnId>, Vec<ConnId>) =
            subscribers.iter().copied().partition(|c| state.is_current(*c));
        // What current joiners got so far is superseded too.
        state.states.remove(&presence);
        if !current.is_empty() {
            // This state supersedes the waiting diff and the states held for it.
            state.diffs.remove(&presence);
            let seq = state.next_seq(&presence);
            let frame = current::state_frame(&presence, members, seq);
            for conn in current {
                self.count_state_delivery(&mut state, conn, &presence, &frame);
            }
        }
        if !legacy.is_empty() {
            let frame = state.legacy_list(&presence, members);
            for conn in legacy {
                self.count_state_delivery(&mut state, conn, &presence, &frame);
            }
        }
    }

    /// Anything but the engine's `list` (see `send_list`), as it is.
    fn send(&self, conn: ConnId, envelope: &Envelope) {
        self.count_delivery(&mut self.lock(), conn, &envelope.to_json().into());
    }

    /// Presence changes reach legacy subscribers now and current ones as the
    /// topic's next `presence_diff`; everything else reaches all as it is.
    fn publish(&self, topic: &str, envelope: &Envelope) {
        let mut state = self.lock();
        let change =
            topic.starts_with(PRESENCE_PREFIX) && matches!(envelope.event.as_str(), "join" | "leave" | "updated");
        let Some(members) = state.topics.get(topic) else {
            if change {
                state.states.remove(topic);
            }
            return;
        };
        let (current, legacy): (Vec<ConnId>, Vec<ConnId>) =
            members.iter().copied().partition(|c| change && state.is_current(*c));
        if change {
            if let Some(base) = state.states.get_mut(topic) {
                base.record(&envelope.event, &envelope.data);
            }
        }
        if !current.is_empty() {
            state.diffs.entry(topic.to_owned()).or_default().record(&envelope.event, &envelope.data);
            self.diffs_waiting.notify_one();
        }
        if legacy.is_empty() {
            return;
        }
        let frame = Frame::from(envelope.to_json());
        for conn in legacy {
            self.count_delivery(&mut state, conn, &frame);
        }
    }

    fn is_open(&self, conn: ConnId) -> bool {
        self.lock().conns.contains_key(&conn)
    }

    /// A kept join the store refused later: the client is told by a close
    /// it retries (1013), and hears the refusal on its next subscribe.
    fn refused(&self, conn: ConnId, topic: &str, error: &crate::Error) {
        tracing::info!(%conn, topic, %error, "a kept join was refused; closing the connection so it retries");
        self.close(conn, &format!("subscribe to {topic:?} refused: {error}"));
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
        // Room for two frames of `{"topic":"t","event":"e","data":1}` (+ overhead).
        let (slow, mut slow_rx) = hub.connect(json!({}), 2 * 100);
        let (fast, mut fast_rx) = hub.connect(json!({}), 2 * 100);
        hub.subscribe(slow, "t");
        hub.subscribe(fast, "t");
        let envelope = Envelope::new("t", "e", serde_json::value::RawValue::from_string("1".into()).unwrap());
        for _ in 0..3 {
            hub.publish("t", &envelope);
            assert!(fast_rx.try_recv().is_some());
        }
        assert!(!hub.is_open(slow));
        assert_eq!(hub.overflows(), 1);
        assert!(slow_rx.try_recv().is_some() && slow_rx.try_recv().is_some());
        assert!(slow_rx.try_recv().is_none(), "nothing beyond the queue, and the queue is closed");
        assert!(hub.is_open(fast));
    }

    /// The list fast path writes exactly what the envelope path writes.
    #[test]
    fn a_list_frame_is_the_envelope_it_replaces() {
        let members = r#"[{"key":"a","data":{"n":"x\"y"}}]"#;
        let envelope = Envelope::list("t \"q\"", members.to_owned());
        assert_eq!(&*legacy_list_frame(&presence_topic("t \"q\""), members), envelope.to_json());
    }

    /// A current subscriber that joins while a diff is waiting gets its
    /// state with that diff, state first, in one flush; joiners of one diff
    /// window share one state frame; with no diff waiting, the state goes at
    /// once.
    #[test]
    fn a_state_goes_out_with_the_waiting_diff() {
        let hub = Hub::new();
        let topic = "__presence:t";
        let member =
            |key: &str| serde_json::value::RawValue::from_string(format!(r#"{{"key":"{key}","data":{{}}}}"#)).unwrap();
        let (ada, mut ada_rx) = hub.connect(json!({}), 1 << 16);
        hub.set_current(ada, false);
        hub.subscribe(ada, topic);
        hub.send_list(ada, "t", &Members::none());
        assert!(ada_rx.try_recv().is_some_and(|f| f.contains("presence_state")), "no diff waiting: at once");

        hub.publish(topic, &Envelope::new(topic, "join", member("bob")));
        let (bob, mut bob_rx) = hub.connect(json!({}), 1 << 16);
        let (cy, mut cy_rx) = hub.connect(json!({}), 1 << 16);
        hub.set_current(bob, false);
        hub.set_current(cy, true);
        for conn in [bob, cy] {
            hub.subscribe(conn, topic);
            hub.send_list(conn, "t", &Members::none());
        }
        assert!(bob_rx.try_recv().is_none() && cy_rx.try_recv().is_none(), "held for the diff");
        hub.flush_diffs();
        // The state ada's join built (shared), the change since it (bob's
        // join), then the waiting diff.
        let bob_frames: Vec<Frame> = std::iter::from_fn(|| bob_rx.try_recv()).collect();
        assert_eq!(bob_frames.len(), 3);
        assert!(bob_frames[0].contains("presence_state") && !bob_frames[0].contains("bob"));
        assert!(bob_frames[1].contains("presence_diff") && bob_frames[1].contains("bob"));
        assert!(bob_frames[2].contains("presence_diff"));
        // A batch client too gets the state on its own (the very frame bob
        // got: shared, never copied into a batch), then the diffs.
        let cy_frames: Vec<Frame> = std::iter::from_fn(|| cy_rx.try_recv()).collect();
        assert_eq!(cy_frames.len(), 3);
        assert_eq!(cy_frames[0].as_str().as_ptr(), bob_frames[0].as_str().as_ptr(), "one state, shared");
        assert!(cy_frames[1].contains("presence_diff") && cy_frames[2].contains("presence_diff"));
        assert!(ada_rx.try_recv().is_some_and(|f| f.contains("presence_diff")) && ada_rx.try_recv().is_none());
    }

    /// A held-back state is not sent to a connection that left the topic
    /// before the flush, and a state published to the whole topic replaces it.
    #[test]
    fn a_held_state_follows_the_topic() {
        let hub = Hub::new();
        let topic = "__presence:t";
        let join = serde_json::value::RawValue::from_string(r#"{"key":"a","data":{}}"#.into()).unwrap();
        let (watcher, _watcher_rx) = hub.connect(json!({}), 1 << 16);
        let (left, mut left_rx) = hub.connect(json!({}), 1 << 16);
        let (stayed, mut stayed_rx) = hub.connect(json!({}), 1 << 16);
        for conn in [watcher, left, stayed] {
            hub.set_current(conn, false);
        }
        hub.subscribe(watcher, topic);
        hub.publish(topic, &Envelope::new(topic, "join", join));
        for conn in [left, stayed] {
            hub.subscribe(conn, topic);
            hub.send_list(conn, "t", &Members::none());
        }
        hub.unsubscribe(left, topic);
        hub.publish_list("t", &Members::none());
        hub.flush_diffs();
        assert!(left_rx.try_recv().is_none());
        let frames: Vec<Frame> = std::iter::from_fn(|| stayed_rx.try_recv()).collect();
        assert_eq!(frames.len(), 1, "only the published state: {frames:?}");
        assert!(frames[0].contains("presence_state") && frames[0].contains(r#""seq":1"#));
        assert_eq!(hub.overflows(), 0);
    }

    /// A topic's bookkeeping goes with its last subscriber.
    #[test]
    fn topics_are_forgotten_with_their_last_subscriber() {
        let hub = Hub::new();
        let (conn, _rx) = hub.connect(json!({}), 4096);
        hub.set_current(conn, false);
        hub.subscribe(conn, "__presence:t");
        let member = serde_json::value::RawValue::from_string(r#"{"key":"a","data":{}}"#.into()).unwrap();
        hub.publish("__presence:t", &Envelope::new("__presence:t", "join", member));
        hub.flush_diffs();
        assert_eq!(hub.lock().seqs.len(), 1);
        hub.unsubscribe(conn, "__presence:t");
        let state = hub.lock();
        assert!(state.seqs.is_empty() && state.diffs.is_empty() && state.topics.is_empty());
    }
}
