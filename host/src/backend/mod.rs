//! Where presence state lives: the [`Backend`] trait the engine is written
//! against, and its two implementations — [`redis::RedisBackend`] (shared by
//! every instance, the product) and [`memory::MemoryBackend`] (one process, the
//! embedded default and the fast test double of the same semantics).
//!
//! A backend speaks for one *instance*: every hold it takes is that instance's,
//! and every change it makes is announced to the other instances watching the
//! topic through [`BackendEvent`]s.
//!
//! # Guarantees
//!
//! Every backend keeps these; the scripts and the engine name them where they
//! are served, and `tests/` proves each against a real `redis-server`.
//!
//! - **one round trip**: a join and a leave are one atomic step each; a
//!   heartbeat costs a few commands per topic, whatever the number of users
//!   held, in one pipelined batch.
//! - **crash expiry**: each instance's hold on a topic expires on its own, so a
//!   crashed instance's users leave exactly once within `ttl` + one sweep,
//!   while the other instances keep the topic alive.
//! - **exactly once**: a user's first hold anywhere announces one `join`, the
//!   last one released one `leave`; other data from another holder, `updated`.
//! - **recovery**: after the store lost data (restart, flush, failover), the
//!   next tick reports the loss and every live user is back within one
//!   heartbeat; a vanished user's `leave` is still announced. A store restored
//!   from an older copy is noticed by the topic's next verify.
//! - **clear sticks**: `clear()` stamps a new epoch; no heartbeat or late
//!   join made before it brings the old state back.
//! - **any bytes**: user keys and topics are arbitrary strings, never parsed
//!   out of a compound name; every key of a topic lives in one cluster slot.
//! - **one clock**: expiries and sequence numbers are stamped and compared on
//!   the store's clock, never on an instance's, so a skewed instance clock
//!   neither flaps its users nor keeps a crashed instance's users alive.

pub(crate) mod measured;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::mpsc;

/// The underlying error of a failed backend operation (a `redis::RedisError`
/// for the Redis backend, reachable with `downcast_ref`). Shared, so a
/// [`BackendError`] stays `Clone` and can reach every waiter of one call.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// What went wrong talking to the backend. Every operation is bounded in time:
/// an unreachable or stalled Redis yields [`BackendError::Timeout`] or
/// [`BackendError::Unavailable`], never a hang.
///
/// The message names the operation and what the store said; the store's own
/// error stays reachable as the [`source`](std::error::Error::source).
///
/// ```
/// use presence::backend::BackendError;
/// use std::error::Error as _;
///
/// let e = BackendError::unavailable("join", std::io::Error::other("connection refused"));
/// assert!(e.outcome_unknown());
/// assert_eq!(e.to_string(), "backend unavailable during `join`: connection refused");
/// assert!(e.source().is_some());
/// ```
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// No answer in time (a stalled or partitioned Redis); the operation
    /// may or may not have been applied.
    #[error("backend operation `{op}` timed out after {after:?}")]
    Timeout {
        /// The operation (`join`, `tick`, …).
        op: &'static str,
        /// The bound it exceeded.
        after: Duration,
    },
    /// The connection failed (refused, dropped, a cluster between owners of
    /// a slot); the operation may or may not have been applied.
    #[error("backend unavailable during `{op}`: {cause}")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// What the connection reported.
        #[source]
        cause: Cause,
    },
    /// A reply the backend could not use (a script error, a bad value).
    #[error("backend sent an unexpected reply to `{op}`: {reason}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// What was wrong with the reply.
        reason: String,
        /// The store's error, when it sent one.
        #[source]
        cause: Option<Cause>,
    },
    /// Redis refused the credentials or the command (ACL).
    #[error("Redis refused `{op}`: {cause} (check the user and password in the URL, and the user's ACL)")]
    Refused {
        /// The operation.
        op: &'static str,
        /// Redis's refusal.
        #[source]
        cause: Cause,
    },
    /// The backend's configuration is wrong (a bad key prefix or URL):
    /// nothing was tried.
    #[error("invalid backend configuration: {0}")]
    Config(String),
    /// The backend was shut down.
    #[error("backend has been shut down")]
    Closed,
}

impl BackendError {
    /// True when the operation may have been applied even though it failed
    /// (the reply was lost): the caller must compensate.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, BackendError::Timeout { .. } | BackendError::Unavailable { .. })
    }

    /// [`BackendError::Unavailable`] for `op`, caused by `cause`.
    pub fn unavailable(op: &'static str, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        BackendError::Unavailable { op, cause: Cause::from(cause.into()) }
    }

    /// [`BackendError::Protocol`] for `op`: a reply that could not be used.
    pub fn protocol(op: &'static str, reason: impl Into<String>) -> Self {
        BackendError::Protocol { op, reason: reason.into(), cause: None }
    }
}

/// Result of [`Backend::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// First holder anywhere: `join` was announced with this sequence number.
    Joined {
        /// The announcement's sequence number.
        seq: u64,
    },
    /// Already present with other data: `updated` was announced.
    Updated {
        /// The announcement's sequence number.
        seq: u64,
    },
    /// Already present with the same data: nothing announced.
    Unchanged,
    /// The topic was cleared since this instance last looked; nothing changed.
    /// The caller drops its local state of the topic and adopts `epoch`.
    StaleEpoch {
        /// The topic's epoch now.
        epoch: String,
    },
    /// A new user, refused because the topic already lists `members` users
    /// (at least [`HoldTerms::max_members`]); nothing changed.
    Full {
        /// How many users the topic lists.
        members: u64,
    },
}

/// The terms of a hold: how long it lasts without a tick, and how many
/// users the topic may list before a new user is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldTerms {
    /// How long the hold lasts without a heartbeat.
    pub ttl: Duration,
    /// 0: no cap.
    pub max_members: u64,
}

impl HoldTerms {
    /// A hold of `ttl`, with no cap on the topic's users.
    pub fn ttl(ttl: Duration) -> Self {
        Self { ttl, max_members: 0 }
    }
}

/// Result of [`Backend::leave`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// Nobody shows the user any more and `leave` was announced: either this
    /// was the last holder anywhere (`data` is what was shown), or the user
    /// had vanished with lost data (`data` is `null`) and the announcement
    /// lets every replica drop a stale copy.
    Left {
        /// The announcement's sequence number.
        seq: u64,
        /// The public data that was shown (JSON text).
        data: String,
    },
    /// Another instance still holds the user.
    StillHeld,
    /// This instance did not hold the user and another one shows it.
    NotHeld,
}

/// One change of this instance's hold of one user, for [`Backend::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChange<'a> {
    /// Take the hold (or refresh its data): [`Backend::join`].
    Assert {
        /// The user key.
        key: &'a str,
        /// The user's public data (JSON text).
        data: &'a str,
    },
    /// Let go of it: [`Backend::leave`].
    Release {
        /// The user key.
        key: &'a str,
    },
}

/// What one [`HoldChange`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// What the [`HoldChange::Assert`] did.
    Asserted(JoinOutcome),
    /// What the [`HoldChange::Release`] did.
    Released(LeaveOutcome),
}

/// A topic's state at one instant: every event with `seq <= self.seq` is in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The sequence number the snapshot is at.
    pub seq: u64,
    /// The topic's epoch (`None` until its first `clear()`).
    pub epoch: Option<String>,
    /// (user key, public data as JSON text)
    pub users: Vec<(String, String)>,
}

/// One topic in a heartbeat tick.
#[derive(Debug, Clone)]
pub struct TickTopic {
    /// The topic.
    pub topic: String,
    /// How many users this instance believes it holds here (0: it only
    /// observes, and only sweeps). Fewer in the store means holds were lost.
    pub held: usize,
    /// The epoch this instance knows for the topic.
    pub epoch: Option<String>,
    /// This instance's connections on the topic, when they changed since the
    /// store last took them (`None`: unchanged), for [`Backend::stats`]. The
    /// store keeps them with the instance's hold and drops them with it.
    pub connections: Option<u64>,
    /// Also check the topic closely: count this instance's holds (a loss
    /// that a join's new hold hides), read its epoch (a missed clear) and
    /// report its [`Latest`] state. The engine asks every few ticks per
    /// topic, spread over topics, and a store may verify more often.
    pub verify: bool,
    /// Also renew the backstop expiry of the topic's keys (see [`backstop`]):
    /// due a few times per backstop, spread over topics.
    pub renew: bool,
}

/// A topic's size as the store counts it, without reading its members
/// ([`Backend::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCounts {
    /// Unique users.
    pub users: u64,
    /// Connections over every instance, as each last reported them.
    pub connections: u64,
    /// What this instance last reported (the caller may know better now).
    pub own_connections: u64,
}

/// What a heartbeat tick found on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    /// Hold refreshed (or nothing to refresh).
    Alive,
    /// Some or all of this instance's holds were gone (data lost, or the
    /// instance was swept after being cut off): the engine must re-assert its
    /// users with `join`. A missing hold is never re-created by the tick.
    Lost,
    /// The topic was cleared: the engine drops its local state of it.
    Cleared {
        /// The topic's new epoch.
        epoch: String,
    },
    /// The store could not tick this topic (its keys are unusable); the other
    /// topics of the tick are unaffected, and the next tick tries again.
    Failed {
        /// What the store said.
        reason: String,
    },
}

/// A tick's outcome plus, from a store that can lose events or data, the
/// topic's state right after it, so an instance can tell whether its replica
/// has drifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// What happened to this instance's hold.
    pub outcome: TickOutcome,
    /// The topic's state right after (`None` from a store that cannot drift,
    /// or when the tick did not verify the topic).
    pub latest: Option<Latest>,
}

/// A topic's state as the store has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    /// The newest sequence number (0: the store has none, as after a loss).
    pub seq: u64,
    /// How many users the store shows.
    pub members: u64,
}

/// A change on a topic, announced by whichever instance made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The topic.
    pub topic: String,
    /// The instance the change belongs to (for a sweep: the dead one).
    pub instance: String,
    /// Its sequence number on the topic.
    pub seq: u64,
    /// The topic's sequence number just before it, from a store that can
    /// lose events (`None` otherwise): a receiver whose last event on the
    /// topic was not this one missed one in between.
    pub previous: Option<u64>,
    /// Join, update or leave.
    pub kind: ChangeKind,
    /// The user key.
    pub key: String,
    /// Public data as JSON text.
    pub data: String,
}

/// What happened to a user on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// First holder anywhere.
    Join,
    /// Other public data.
    Updated,
    /// Last holder gone.
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
    /// A user joined, changed or left.
    Change(Change),
    /// A topic was cleared.
    Cleared {
        /// The topic.
        topic: String,
        /// The instance that cleared it.
        instance: String,
        /// The topic's new epoch.
        epoch: String,
    },
    /// The event stream was interrupted and is flowing again: events may have
    /// been missed, so the engine re-reads every topic it watches.
    Resynced,
    /// One topic's events were interrupted (on a cluster: its shard failed
    /// over or its slot moved) and flow again: the engine re-reads that topic.
    TopicResynced {
        /// The topic to read again.
        topic: String,
    },
}

/// The operations the engine needs from a shared store. Each one is a single
/// atomic step (one round trip on Redis) and is bounded in time.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// This instance's id: 16 lowercase hex characters.
    fn instance(&self) -> &str;

    /// Take (or refresh the data of) this instance's hold of `key` on `topic`.
    /// The hold expires `terms.ttl` from now unless a tick refreshes it; a
    /// user new to a topic at its `terms.max_members` is refused
    /// ([`JoinOutcome::Full`]), in the same atomic step.
    async fn join(
        &self,
        topic: &str,
        key: &str,
        data: &str,
        epoch: Option<&str>,
        terms: HoldTerms,
    ) -> Result<JoinOutcome, BackendError>;

    /// Release this instance's hold of `key` on `topic`.
    async fn leave(&self, topic: &str, key: &str) -> Result<LeaveOutcome, BackendError>;

    /// Several hold changes on one topic, each as [`Backend::join`] or
    /// [`Backend::leave`] would make it, in one round trip where the backend
    /// can (Redis pipelines them). One outcome per change, in order.
    async fn apply(
        &self,
        topic: &str,
        epoch: Option<&str>,
        terms: HoldTerms,
        changes: &[HoldChange<'_>],
    ) -> Result<Vec<HoldOutcome>, BackendError> {
        let mut outcomes = Vec::with_capacity(changes.len());
        for change in changes {
            outcomes.push(match *change {
                HoldChange::Assert { key, data } => {
                    HoldOutcome::Asserted(self.join(topic, key, data, epoch, terms).await?)
                }
                HoldChange::Release { key } => HoldOutcome::Released(self.leave(topic, key).await?),
            });
        }
        Ok(outcomes)
    }

    /// Sweep expired holds, then read the topic. `seen` is the newest sequence
    /// number the caller has seen on it (0: none): if the store's counter is
    /// behind it (data was lost), the snapshot takes a number above it.
    async fn snapshot(&self, topic: &str, seen: u64) -> Result<Snapshot, BackendError>;

    /// Sweep expired holds, then count the topic's unique users.
    async fn count(&self, topic: &str) -> Result<u64, BackendError>;

    /// Sweep expired holds, then count the topic's users and connections,
    /// without reading its members.
    async fn stats(&self, topic: &str) -> Result<TopicCounts, BackendError>;

    /// Refresh this instance's holds and sweep, for every topic given, in one
    /// pipelined batch (verifying and renewing the topics that ask for it).
    /// Returns one report per topic, in order.
    async fn tick(&self, topics: &[TickTopic], ttl: Duration) -> Result<Vec<TickReport>, BackendError>;

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

    /// Why the backend cannot deliver events right now (e.g. its subscriber
    /// is reconnecting), for readiness checks; `None` when it can.
    fn degraded(&self) -> Option<String> {
        None
    }
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
