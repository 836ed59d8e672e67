//! The seam between the engine and whatever carries connections (the
//! `presenced` WebSocket server, an embedding application, tests).

use super::replica::Replica;
use super::Envelope;
use serde_json::Value;

/// A connection's id, unique within one engine instance.
///
/// The platform that owns the connections mints them; the engine only
/// compares and stores them.
///
/// ```
/// use presence::ConnId;
/// let conn = ConnId::new(7);
/// assert_eq!(conn.get(), 7);
/// assert_eq!(conn.to_string(), "7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

impl ConnId {
    /// The id for the platform's connection number `raw`.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The platform's connection number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What the engine needs from the server that owns the connections.
///
/// Calls are synchronous and may happen while the engine holds an internal
/// lock (so events reach clients in order): implementations must be quick —
/// queue, don't write to sockets — and must not call back into the engine.
/// [`crate::Hub`] is a ready one; `examples/embed-tungstenite` writes its own.
///
/// ```
/// use presence::backend::memory::MemoryStore;
/// use presence::{ConnId, Envelope, Members, Platform, Presence};
/// use serde_json::{json, Value};
/// use std::sync::{Arc, Mutex};
///
/// /// One connection that records what it would write to its socket.
/// #[derive(Default)]
/// struct Recorder(Mutex<Vec<String>>);
///
/// impl Platform for Recorder {
///     fn user_data(&self, _: ConnId) -> Option<Value> {
///         Some(json!({"id": "ada"}))
///     }
///     fn subscribe(&self, _: ConnId, _: &str) {}
///     fn unsubscribe(&self, _: ConnId, _: &str) {}
///     fn send(&self, _: ConnId, envelope: &Envelope) {
///         self.0.lock().unwrap().push(envelope.to_json());
///     }
///     // The members' JSON, built once per change, copied straight into a frame.
///     fn send_list(&self, _: ConnId, topic: &str, members: &Members<'_>) {
///         self.0.lock().unwrap().push(format!("{topic}: {}", members.list_json()));
///     }
///     fn publish(&self, _: &str, envelope: &Envelope) {
///         self.0.lock().unwrap().push(envelope.to_json());
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), presence::Error> {
/// let recorder = Arc::new(Recorder::default());
/// let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), recorder.clone()).build()?;
/// presence.join(ConnId::new(1), "lobby").await?;
/// let sent = recorder.0.lock().unwrap();
/// assert!(sent.iter().any(|frame| frame == r#"lobby: [{"key":"ada","data":{"id":"ada"}}]"#), "{sent:?}");
/// # Ok(())
/// # }
/// ```
pub trait Platform: Send + Sync + 'static {
    /// The raw user data of a connection (what `authenticate` produced).
    fn user_data(&self, conn: ConnId) -> Option<Value>;
    /// From now on, `publish(topic, …)` reaches this connection.
    fn subscribe(&self, conn: ConnId, topic: &str);
    /// From now on, `publish(topic, …)` no longer reaches this connection.
    fn unsubscribe(&self, conn: ConnId, topic: &str);
    /// Send one envelope to one connection.
    fn send(&self, conn: ConnId, envelope: &Envelope);
    /// Send `topic`'s members (its `list`) to one connection. The default
    /// wraps [`Members::list_json`] in an [`Envelope`]; a platform can write
    /// either encoding straight into its frame instead, skipping that step's
    /// JSON validation, which costs as much as the copy for a room of thousands.
    fn send_list(&self, conn: ConnId, topic: &str, members: &Members<'_>) {
        self.send(conn, &Envelope::list(topic, members.list_json().to_owned()));
    }
    /// Send one envelope to every local connection subscribed to `topic`.
    fn publish(&self, topic: &str, envelope: &Envelope);
    /// Send `topic`'s members to every local connection subscribed to its
    /// presence (`__presence:<topic>`), replacing what they list (a topic
    /// entering or leaving count-only mode). The default publishes a `list`.
    fn publish_list(&self, topic: &str, members: &Members<'_>) {
        self.publish(&super::presence_topic(topic), &Envelope::list(topic, members.list_json().to_owned()));
    }
    /// A join that was kept while the backend could not answer, and that the
    /// backend then refused (the topic filled up meanwhile), or one whose
    /// caller stopped waiting before it was refused: the connection is not
    /// in the topic, and nobody has told its client. The default does
    /// nothing; [`crate::Hub`] closes the connection with 1013 (try again
    /// later), so the client reconnects and hears the refusal then.
    fn refused(&self, conn: ConnId, topic: &str, error: &super::Error) {
        let _ = (conn, topic, error);
    }
    /// False once the connection is gone; the heartbeat leaves such connections.
    fn is_open(&self, conn: ConnId) -> bool {
        let _ = conn;
        true
    }
}

/// A topic's members as the engine hands them to [`Platform::send_list`]:
/// serialized, valid JSON by construction, built at most once per change of
/// the topic and shared by every connection that receives them.
pub struct Members<'a> {
    /// `None`: nobody (what a count-only topic shows).
    replica: Option<&'a Replica>,
}

impl<'a> Members<'a> {
    pub(crate) fn new(replica: &'a Replica) -> Self {
        Self { replica: Some(replica) }
    }

    /// No members: what subscribers of a count-only topic are shown.
    pub(crate) fn none() -> Self {
        Self { replica: None }
    }

    /// `[{"key":…,"data":…},…]`: the data of a legacy `list` event.
    pub fn list_json(&self) -> &'a str {
        self.replica.map_or("[]", Replica::list_json)
    }

    /// `{"<key>":<data>,…}`: the data of a current `presence_state` event.
    pub fn map_json(&self) -> &'a str {
        self.replica.map_or("{}", Replica::map_json)
    }

    /// Which version of the members these are: another value for every
    /// change, never reused (0: no members, as a count-only topic shows), so
    /// a platform can share one frame per version.
    pub fn version(&self) -> u64 {
        self.replica.map_or(0, Replica::version)
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.replica.map_or(0, Replica::len)
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
