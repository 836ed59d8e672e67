//! The seam between the engine and whatever carries connections (the
//! `presenced` WebSocket server, an embedding application, tests).

use super::Envelope;
use serde_json::Value;

/// A connection's id, unique within one engine instance.
pub type ConnId = u64;

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
