//! The engine's error type: what a caller of the presence API can get back.
//! A join refused by a cap says so with a machine word first (`TOPIC_FULL:`,
//! `LIMIT_EXCEEDED:`), which survives a plugin hook passing the message on
//! and reaches current clients as their denial reason ([`limit_word`]).

use crate::backend::BackendError;
use crate::engine::ConnId;

/// What a presence operation can fail with. Refusals change nothing.
///
/// ```
/// # use presence::backend::memory::MemoryStore;
/// # use presence::{Error, Hub, Presence};
/// # use std::sync::Arc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// # let hub = Hub::new();
/// # let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), hub.clone()).build()?;
/// let (ada, _) = hub.connect(serde_json::json!({"id": "ada"}), 1 << 20);
/// match presence.join(ada, "").await {
///     Err(Error::InvalidTopic { reason, .. }) => println!("refused: {reason}"),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(presence.count("lobby").await?, 0, "a refusal changes nothing");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option makes no sense.
    #[error("invalid option `{name}`: {reason}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A topic the engine does not take (empty, too long, control characters).
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic (its first 64 characters).
        topic: String,
        /// Why.
        reason: &'static str,
    },
    /// The platform does not know the connection.
    #[error("unknown connection {0}: the platform has no user data for it")]
    UnknownConnection(ConnId),
    /// `select` refused the user data.
    #[error("select rejected the user data: {0}")]
    Select(String),
    /// The public data is over `max_data_bytes`.
    #[error("LIMIT_EXCEEDED: public data is {size} bytes, over the limit of {limit} bytes (max_data_bytes)")]
    DataTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The user key is over `max_key_bytes`.
    #[error("LIMIT_EXCEEDED: the user key is {size} bytes, over the limit of {limit} bytes (max_key_bytes)")]
    KeyTooLong {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A new user on a topic at `max_members_per_topic`.
    #[error("TOPIC_FULL: the topic lists {members} users, its limit is {limit} (max_members_per_topic)")]
    TopicFull {
        /// How many users the topic lists.
        members: u64,
        /// The limit.
        limit: u64,
    },
    /// The connection is in `max_topics_per_connection` topics already.
    #[error("LIMIT_EXCEEDED: connection {conn} already uses {limit} topics (max_topics_per_connection)")]
    TooManyTopicsForConnection {
        /// The connection.
        conn: ConnId,
        /// The limit.
        limit: usize,
    },
    /// This instance serves `max_topics_per_instance` topics already.
    #[error("LIMIT_EXCEEDED: this instance already serves {limit} topics (max_topics_per_instance)")]
    TooManyTopics {
        /// The limit.
        limit: usize,
    },
    /// The backend failed (a read, or a change known not to be applied).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The backend could not be reached for a join (or a sync): it is kept
    /// and the heartbeat makes it once the backend answers; the connection
    /// then gets its `list`.
    #[error("{0}; kept, and made when the backend answers")]
    Deferred(#[source] BackendError),
    /// `clear()` ran twice while this join was being made (each time
    /// dropping the topic's state); nothing of the join stays behind and it
    /// may be tried again.
    #[error("topic {topic:?} was cleared while the join was being made; try again")]
    ClearedWhileJoining {
        /// The topic.
        topic: String,
    },
    /// The engine was destroyed.
    #[error("presence has been destroyed")]
    Destroyed,
}

/// The machine word of a refusal by a cap, from the error or its message
/// (as a plugin hook passes it on): `TOPIC_FULL` or `LIMIT_EXCEEDED`.
pub fn limit_word(message: &str) -> Option<&'static str> {
    ["TOPIC_FULL", "LIMIT_EXCEEDED"].into_iter().find(|word| message.contains(&format!("{word}: ")))
}
