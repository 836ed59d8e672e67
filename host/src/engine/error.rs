//! The engine's error type: what a caller of the presence API can get back.

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
    #[error("public data is {size} bytes, over the limit of {limit} bytes")]
    DataTooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}; the join is kept and will be made when the backend answers")]
    Deferred(#[source] BackendError),
    #[error("presence has been destroyed")]
    Destroyed,
}
