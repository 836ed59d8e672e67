//! Where presence state lives: the [`Backend`] trait the engine is written
//! against, and its two implementations — [`redis::RedisBackend`] (shared by
//! every instance, the product) and [`memory::MemoryBackend`] (one process, the
//! embedded default and the fast test double of the same semantics).
//!
//! A backend speaks for one *instance*: every hold it takes is that instance's,
//! and every change it makes is announced to the other instances watching the
//! topic through [`BackendEvent`]s.

pub mod measured;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::mpsc;

/// What went wrong talking to the backend. Every operation is bounded in time:
/// an unreachable or stalled Redis yields [`BackendError::Timeout`] or
/// [`BackendError::Unavailable`], never a hang.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("backend operation `{op}` timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("backend unavailable during `{op}`: {reason}")]
    Unavailable { op: &'static str, reason: String },
    #[error("backend sent an unexpected reply to `{op}`: {reason}")]
    Protocol { op: &'static str, reason: String },
    #[error("backend has been shut down")]
    Closed,
}

impl BackendError {
    /// True when the operation may have been applied even though it failed
    /// (the reply was lost): the caller must compensate.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, BackendError::Timeout { .. } | BackendError::Unavailable { .. })
    }
}

/// Result of [`Backend::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// First holder anywhere: `join` was announced with this sequence number.
    Joined { seq: u64 },
    /// Already present with other data: `updated` was announced.
    Updated { seq: u64 },
    /// Already present with the same data: nothing announced.
    Unchanged,
    /// The topic was cleared since this instance last looked; nothing changed.
    /// The caller drops its local state of the topic and adopts `epoch`.
    StaleEpoch { epoch: String },
}

/// Result of [`Backend::leave`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// Last holder anywhere: `leave` was announced; `data` is what was shown.
    Left { seq: u64, data: String },
    /// Another instance still holds the user.
    StillHeld,
    /// This instance did not hold the user (idempotent leave).
    NotHeld,
}

/// A topic's state at one instant: every event with `seq <= self.seq` is in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    pub epoch: Option<String>,
    /// (user key, public data as JSON text)
    pub users: Vec<(String, String)>,
}

/// One topic in a heartbeat tick.
#[derive(Debug, Clone)]
pub struct TickTopic {
    pub topic: String,
    /// This instance holds users here (else it only observes, and only sweeps).
    pub holds: bool,
    pub epoch: Option<String>,
}

/// What a heartbeat tick found on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    /// Hold refreshed (or nothing to refresh).
    Alive,
    /// This instance's hold was gone (data lost, or it was swept after being
    /// cut off): the engine must re-assert its users with `join`.
    Lost,
    /// The topic was cleared: the engine drops its local state of it.
    Cleared { epoch: String },
}

/// A change on a topic, announced by whichever instance made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub topic: String,
    /// The instance the change belongs to (for a sweep: the dead one).
    pub instance: String,
    pub seq: u64,
    pub kind: ChangeKind,
    pub key: String,
    /// Public data as JSON text.
    pub data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Join,
    Updated,
    Leave,
}

impl ChangeKind {
    /// The event name clients see.
    pub fn event(self) -> &'static str {
        match self {
            ChangeKind::Join => "join",
            ChangeKind::Updated => "updated",
            ChangeKind::Leave => "leave",
        }
    }
}

/// What a backend tells the engine, in the order it learned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    Change(Change),
    Cleared {
        topic: String,
        instance: String,
        epoch: String,
    },
    /// The event stream was interrupted and is flowing again: events may have
    /// been missed, so the engine re-reads every topic it watches.
    Resynced,
}

/// The operations the engine needs from a shared store. Each one is a single
/// atomic step (one round trip on Redis) and is bounded in time.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// This instance's id: 16 lowercase hex characters.
    fn instance(&self) -> &str;

    /// Take (or refresh the data of) this instance's hold of `key` on `topic`.
    /// The hold expires `ttl` from now unless a tick refreshes it.
    async fn join(
        &self,
        topic: &str,
        key: &str,
        data: &str,
        epoch: Option<&str>,
        ttl: Duration,
    ) -> Result<JoinOutcome, BackendError>;

    /// Release this instance's hold of `key` on `topic`.
    async fn leave(&self, topic: &str, key: &str) -> Result<LeaveOutcome, BackendError>;

    /// Sweep expired holds, then read the topic.
    async fn snapshot(&self, topic: &str) -> Result<Snapshot, BackendError>;

    /// Sweep expired holds, then count the topic's unique users.
    async fn count(&self, topic: &str) -> Result<u64, BackendError>;

    /// Refresh this instance's holds and sweep, for every topic given, in one
    /// pipelined batch. Returns one outcome per topic, in order.
    async fn tick(&self, topics: &[TickTopic], ttl: Duration) -> Result<Vec<TickOutcome>, BackendError>;

    /// Wipe every topic and announce `clear` on each.
    async fn clear(&self) -> Result<(), BackendError>;

    /// Start receiving the topic's events. Returns once they flow.
    async fn watch(&self, topic: &str) -> Result<(), BackendError>;

    /// Stop receiving the topic's events.
    fn unwatch(&self, topic: &str);

    /// The event stream. The engine takes it once; later calls get `None`.
    fn events(&self) -> Option<mpsc::UnboundedReceiver<BackendEvent>>;

    /// Stop background work (subscriber, reconnects). Holds are left to expire.
    fn shutdown(&self);
}

/// A fresh instance id: 16 random lowercase hex characters.
pub fn new_instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// How long a topic's keys outlive the last heartbeat that touched them: a
/// backstop for topics nobody sweeps any more.
pub fn backstop(ttl: Duration) -> Duration {
    (ttl * 10).max(Duration::from_secs(60))
}

/// Milliseconds since the Unix epoch: the clock every holder's expiry uses.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
