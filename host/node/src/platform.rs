//! The engine's [`Platform`] inside a Node process: the sockets are the
//! application's (`ws` and `platform` objects never cross into Rust), so what
//! the engine would do to a connection is queued as an [`Event`] for the
//! JavaScript facade (a batch of them as one JSON array), which applies it (`ws.subscribe`, `platform.send`,
//! its diff buffer). The facade drains the queue after each call it awaited,
//! and when woken: a remote change or a heartbeat queues events outside any
//! call, and the queue wakes the facade once (a thread-safe function that
//! does not keep the process alive) until it drains again.

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use presence::{ConnId, Envelope, Members, Platform};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What the engine asks of a connection, or of every subscriber of a
/// topic, for the facade to do.
#[derive(Clone, Copy)]
enum Kind {
    Subscribe,
    Unsubscribe,
    /// An event to one connection.
    Send,
    /// An event to every local subscriber of a topic.
    Publish,
    /// A kept join the backend refused once it answered.
    Refused,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Subscribe => "subscribe",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Send => "send",
            Kind::Publish => "publish",
            Kind::Refused => "refused",
        }
    }
}

/// Wakes the facade: a function of no arguments, weak (it does not keep the
/// event loop alive).
pub type Wake = ThreadsafeFunction<(), (), (), Status, false, true>;

/// The connections the facade registered, and the events waiting for it.
pub struct NodePlatform {
    /// connection → its raw user data (what `select` and the user key read).
    conns: Mutex<HashMap<ConnId, Value>>,
    /// The queued events as the elements of a JSON array (the facade
    /// parses a whole batch at once: one `JSON.parse` instead of an object
    /// built through napi per event and a parse per event's data).
    events: Mutex<String>,
    /// The facade was woken and has not drained since.
    woken: AtomicBool,
    wake: Wake,
}

impl NodePlatform {
    pub fn new(wake: Wake) -> Self {
        Self { conns: Mutex::default(), events: Mutex::default(), woken: AtomicBool::new(false), wake }
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The facade's connection, with its user data as it is now.
    pub fn register(&self, conn: ConnId, user_data: Value) {
        Self::lock(&self.conns).insert(conn, user_data);
    }

    /// The facade let go of the connection (it closed).
    pub fn forget(&self, conn: ConnId) {
        Self::lock(&self.conns).remove(&conn);
    }

    /// Connections registered.
    pub fn connections(&self) -> usize {
        Self::lock(&self.conns).len()
    }

    /// Every event queued so far, in order, as a JSON array of
    /// `{kind, conn?, topic, event?, data?}` (`data` is the event's data, or
    /// the reason of a refusal); `None` when there is none.
    pub fn drain(&self) -> Option<String> {
        self.woken.store(false, Ordering::Release);
        let events = std::mem::take(&mut *Self::lock(&self.events));
        (!events.is_empty()).then(|| format!("[{events}]"))
    }

    /// Queue one event; `data` is JSON text.
    fn queue(&self, kind: Kind, conn: Option<ConnId>, topic: &str, event: Option<&str>, data: Option<&str>) {
        let mut events = Self::lock(&self.events);
        if !events.is_empty() {
            events.push(',');
        }
        let _ = write!(events, r#"{{"kind":"{}","topic":{}"#, kind.name(), json_string(topic));
        if let Some(conn) = conn {
            let _ = write!(events, r#","conn":{}"#, conn.get());
        }
        if let Some(event) = event {
            let _ = write!(events, r#","event":{}"#, json_string(event));
        }
        if let Some(data) = data {
            let _ = write!(events, r#","data":{data}"#);
        }
        events.push('}');
        drop(events);
        if !self.woken.swap(true, Ordering::AcqRel) {
            // A closed function (the environment is going away) is no error.
            let _ = self.wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

impl Platform for NodePlatform {
    fn user_data(&self, conn: ConnId) -> Option<Value> {
        Self::lock(&self.conns).get(&conn).cloned()
    }

    fn subscribe(&self, conn: ConnId, topic: &str) {
        self.queue(Kind::Subscribe, Some(conn), topic, None, None);
    }

    fn unsubscribe(&self, conn: ConnId, topic: &str) {
        self.queue(Kind::Unsubscribe, Some(conn), topic, None, None);
    }

    fn send(&self, conn: ConnId, envelope: &Envelope) {
        self.queue(Kind::Send, Some(conn), &envelope.topic, Some(&envelope.event), Some(envelope.data.get()));
    }

    /// The extension sends the joiner `presence_state`: `{key: data}`.
    fn send_list(&self, conn: ConnId, topic: &str, members: &Members<'_>) {
        let topic = presence::engine::presence_topic(topic);
        self.queue(Kind::Send, Some(conn), &topic, Some("presence_state"), Some(members.map_json()));
    }

    fn publish(&self, topic: &str, envelope: &Envelope) {
        self.queue(Kind::Publish, None, topic, Some(&envelope.event), Some(envelope.data.get()));
    }

    fn publish_list(&self, topic: &str, members: &Members<'_>) {
        let topic = presence::engine::presence_topic(topic);
        self.queue(Kind::Publish, None, &topic, Some("presence_state"), Some(members.map_json()));
    }

    fn is_open(&self, conn: ConnId) -> bool {
        Self::lock(&self.conns).contains_key(&conn)
    }

    fn refused(&self, conn: ConnId, topic: &str, error: &presence::Error) {
        self.queue(Kind::Refused, Some(conn), topic, None, Some(&json_string(&error.to_string())));
    }
}
