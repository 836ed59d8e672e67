//! The engine's error type: what a caller of the presence API can get back.
//! A join refused by a cap says so with a machine word first (`TOPIC_FULL:`,
//! `LIMIT_EXCEEDED:`), which survives a plugin hook passing the message on
//! and reaches current clients as their denial reason ([`limit_word`]).

use crate::backend::BackendError;
use crate::engine::ConnId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid option `{name}`: {reason}")]
    InvalidOption { name: &'static str, reason: String },
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error("unknown connection {0}: the platform has no user data for it")]
    UnknownConnection(ConnId),
    #[error("select rejected the user data: {0}")]
    Select(String),
    #[error("LIMIT_EXCEEDED: public data is {size} bytes, over the limit of {limit} bytes (max_data_bytes)")]
    DataTooLarge { size: usize, limit: usize },
    #[error("LIMIT_EXCEEDED: the user key is {size} bytes, over the limit of {limit} bytes (max_key_bytes)")]
    KeyTooLong { size: usize, limit: usize },
    #[error("TOPIC_FULL: the topic lists {members} users, its limit is {limit} (max_members_per_topic)")]
    TopicFull { members: u64, limit: u64 },
    #[error("LIMIT_EXCEEDED: connection {conn} already uses {limit} topics (max_topics_per_connection)")]
    TooManyTopicsForConnection { conn: ConnId, limit: usize },
    #[error("LIMIT_EXCEEDED: this instance already serves {limit} topics (max_topics_per_instance)")]
    TooManyTopics { limit: usize },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}; the join is kept and will be made when the backend answers")]
    Deferred(#[source] BackendError),
    #[error("presence has been destroyed")]
    Destroyed,
}

/// The machine word of a refusal by a cap, from the error or its message
/// (as a plugin hook passes it on): `TOPIC_FULL` or `LIMIT_EXCEEDED`.
pub fn limit_word(message: &str) -> Option<&'static str> {
    ["TOPIC_FULL", "LIMIT_EXCEEDED"].into_iter().find(|word| message.contains(&format!("{word}: ")))
}
