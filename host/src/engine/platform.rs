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
pub trait Platform: Send + Sync + 'static {
    /// The raw user data of a connection (what `authenticate` produced).
    fn user_data(&self, conn: ConnId) -> Option<Value>;
    /// From now on, `publish(topic, …)` reaches this connection.
    fn subscribe(&self, conn: ConnId, topic: &str);
    /// From now on, `publish(topic, …)` no longer reaches this connection.
    fn unsubscribe(&self, conn: ConnId, topic: &str);
    /// Send one envelope to one connection.
    fn send(&self, conn: ConnId, envelope: &Envelope);
    /// Send `topic`'s `list` (a JSON array of `{"key","data"}` the engine
    /// built, valid by construction) to one connection. The default wraps it
    /// in an [`Envelope`]; a platform can skip that step's JSON validation,
    /// which costs as much as the copy for a room of thousands.
    fn send_list(&self, conn: ConnId, topic: &str, members_json: &str) {
        self.send(conn, &Envelope::list(topic, members_json.to_owned()));
    }
    /// Send one envelope to every local connection subscribed to `topic`.
    fn publish(&self, topic: &str, envelope: &Envelope);
    /// False once the connection is gone; the heartbeat leaves such connections.
    fn is_open(&self, conn: ConnId) -> bool {
        let _ = conn;
        true
    }
}
