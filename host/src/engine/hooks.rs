//! The ready-made hooks of the original extension — `subscribe`,
//! `unsubscribe`, `close` — routing a connection's subscriptions to the
//! engine: `__presence:<t>` observes `t`, other `__` topics are ignored,
//! every other topic is joined.

use super::{ConnId, Error, Presence};
use presence_defaults::{route, Route};

/// A hook's view of a join or a sync: one the backend cannot take right now
/// is kept and made by the heartbeat, so for the hook (and the client) it
/// succeeded; the connection gets its list once it is made.
pub(crate) fn deferred_is_done(result: Result<(), Error>, conn: ConnId, topic: &str) -> Result<(), Error> {
    match result {
        Err(Error::Deferred(e)) => {
            tracing::debug!(%conn, topic, error = %e, "kept until the backend answers");
            Ok(())
        }
        other => other,
    }
}

/// The ready-made hooks, from [`Presence::hooks`]: what a server calls when a
/// client subscribes, unsubscribes or closes.
///
/// ```
/// # use presence::backend::memory::MemoryStore;
/// # use presence::{Hub, Presence};
/// # use std::sync::Arc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), presence::Error> {
/// # let hub = Hub::new();
/// # let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), hub.clone()).build()?;
/// let (ada, _) = hub.connect(serde_json::json!({"id": "ada"}), 1 << 20);
/// let (bob, _) = hub.connect(serde_json::json!({"id": "bob"}), 1 << 20);
/// presence.hooks().subscribe(ada, "room").await?; // joins
/// presence.hooks().subscribe(bob, "__presence:room").await?; // observes, does not join
/// assert_eq!(presence.count("room").await?, 1);
/// presence.hooks().close(ada).await?; // leaves everything
/// assert_eq!(presence.count("room").await?, 0);
/// # Ok(())
/// # }
/// ```
pub struct Hooks<'a> {
    pub(super) presence: &'a Presence,
}

impl Hooks<'_> {
    /// `__presence:<t>` → sync `t`; other `__` topics → ignored; else join
    /// (a join or sync deferred until the backend answers counts as done).
    pub async fn subscribe(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        match route(topic) {
            Route::Observe(watched) => deferred_is_done(self.presence.sync(conn, watched).await, conn, watched),
            Route::Ignore => Ok(()),
            Route::Join(topic) => deferred_is_done(self.presence.join(conn, topic).await, conn, topic),
        }
    }

    /// `__presence:<t>` → stop observing `t`; other `__` topics → ignored;
    /// else leave that topic.
    pub async fn unsubscribe(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        match route(topic) {
            Route::Observe(watched) => {
                self.presence.unsync(conn, watched);
                Ok(())
            }
            Route::Ignore => Ok(()),
            Route::Join(topic) => self.presence.leave(conn, topic).await,
        }
    }

    /// Leave every topic.
    pub async fn close(&self, conn: ConnId) -> Result<(), Error> {
        self.presence.leave_all(conn).await
    }
}

#[cfg(test)]
mod tests {
    use presence_defaults::{route, user_data_from_query, Route};
    use serde_json::json;

    /// The routing and the demo identity the host and the SDK share.
    #[test]
    fn built_in_routing_and_demo_identity() {
        assert_eq!(route("__presence:room"), Route::Observe("room"));
        assert_eq!(route("__presence:"), Route::Observe(""));
        assert_eq!(route("__internal"), Route::Ignore);
        assert_eq!(route("room"), Route::Join("room"));
        let user = user_data_from_query("id=ada&name=A%C3%B6+B&x=%zz&id=bo&flag");
        assert_eq!(user, json!({"id": "bo", "name": "Aö B", "x": "%zz", "flag": ""}));
        assert_eq!(user_data_from_query(""), json!({}));
    }
}
