//! The presence engine: the original extension's API (`join`, `leave`, `sync`,
//! `list`, `count`, `clear`, `destroy`, hooks) over a [`Backend`], talking to
//! clients through a [`Platform`].
//!
//! Only a user's first local connection on a topic and its last one reach the
//! backend (one round trip each); the rest is local bookkeeping. Each topic
//! with local interest has a replica of its members, seeded by a snapshot and
//! kept by events, so a joiner's `list` costs no round trip.
//!
//! This file is the façade; the parts are:
//! - `membership`: joins, leaves, observers, clears — one path per transition;
//! - `heartbeat`: refresh, settle, replica repair, heartbeat envelopes;
//! - `upkeep`: which topics a tick also verifies and renews;
//! - `events`: the backend's events into replicas, and resyncs;
//! - `outage`: a breaker that keeps joins and leaves while the backend does
//!   not answer, and wakes the heartbeat when it does again;
//! - `supervisor`: background tasks restarted after a panic, and health;
//! - `topic` and `replica`: what one instance keeps per topic;
//! - `hooks`, `options`, `select`, `envelope`, `platform`, `error`.
//!
//! Every operation that changes state runs to completion even if its caller
//! is cancelled (a plugin deadline, a dropped request): see `finish`.

mod builder;
mod counting;
mod envelope;
mod error;
mod events;
mod finish;
mod heartbeat;
mod hooks;
mod linger;
mod membership;
mod options;
mod outage;
mod platform;
mod replica;
pub mod select;
mod supervisor;
mod topic;
mod upkeep;

pub use builder::{Policy, PresenceBuilder};
pub use envelope::{presence_topic, Envelope, PRESENCE_PREFIX};
pub use error::{limit_word, Error};
pub(crate) use hooks::deferred_is_done;
pub use hooks::Hooks;
pub use options::{select_fn, Options, SelectFn};
pub use platform::{ConnId, Members, Platform};
pub use supervisor::Health;

use crate::backend::{Backend, ChangeKind};
use counting::Mode;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use supervisor::Supervisor;
use tokio::sync::Notify;
use topic::{ConnTopics, Topic, TopicState};

/// One member of a topic, as `list` returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// The user key (the `key` option's field, or the connection's own).
    pub key: String,
    /// The user's public data (what `select` kept).
    pub data: Value,
}

/// A presence engine for one instance: a cheap handle, cloned to share it
/// (as mini-redis's `Db`). When the last handle is dropped, or on
/// [`Presence::destroy`] or [`Presence::shutdown`], its heartbeat and event
/// tasks stop; its holds then expire after `ttl` (call
/// [`Presence::leave_everyone`] first for an immediate goodbye).
///
/// ```
/// use presence::backend::memory::MemoryStore;
/// use presence::{Hub, Options, Presence};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), presence::Error> {
/// let hub = Hub::new(); // the connections (a ready `Platform`)
/// let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), hub.clone())
///     .options(Options::default())
///     .build()?;
/// let (ada, mut frames) = hub.connect(serde_json::json!({"id": "ada", "name": "Ada"}), 1 << 20);
/// presence.join(ada, "lobby").await?;
/// assert_eq!(presence.count("lobby").await?, 1);
/// // Ada received the lobby's `list`, herself included.
/// let list = frames.try_recv().expect("a frame");
/// assert!(list.contains(r#""event":"list""#) && list.contains("Ada"));
/// presence.leave_all(ada).await?;
/// assert_eq!(presence.count("lobby").await?, 0);
/// presence.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
    supervisor: Arc<Supervisor>,
    /// Shared by every handle; dropping the last one stops the engine.
    lifetime: Arc<Lifetime>,
}

/// A handle that does not keep the engine running (for what the engine
/// itself owns, like a plugin's presence imports).
#[derive(Clone)]
pub struct WeakPresence(std::sync::Weak<Lifetime>);

impl WeakPresence {
    /// The engine, if a handle to it still exists.
    pub fn upgrade(&self) -> Option<Presence> {
        let lifetime = self.0.upgrade()?;
        Some(Presence { inner: lifetime.inner.clone(), supervisor: lifetime.supervisor.clone(), lifetime })
    }
}

/// Stops the engine when the last [`Presence`] handle goes.
struct Lifetime {
    inner: Arc<Inner>,
    supervisor: Arc<Supervisor>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        stop(&self.inner, &self.supervisor);
    }
}

fn stop(inner: &Inner, supervisor: &Supervisor) {
    inner.destroyed.store(true, Ordering::SeqCst);
    supervisor.abort_all();
    inner.backend.shutdown();
}

/// What this instance showed its local subscribers, by event, and how often
/// it read topics again: a snapshot ([`Presence::stats`]).
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
/// presence.join(ada, "lobby").await?;
/// presence.leave_all(ada).await?;
/// let stats = presence.stats(); // a plain copy: compare, log, export
/// assert_eq!((stats.joins, stats.leaves), (1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Joins shown to local subscribers (as `join` events, or in the count
    /// of a count-only topic).
    pub joins: u64,
    /// Leaves shown, likewise.
    pub leaves: u64,
    /// Data changes shown (`updated`; a count-only topic shows none).
    pub updates: u64,
    /// Times topics were read again after their events were interrupted
    /// (every watched topic, or one whose cluster shard moved).
    pub resyncs: u64,
    /// Topics read again because their replica drifted from the store
    /// (events lost or too late): changes in between reach clients as one.
    pub repairs: u64,
}

/// One topic's size ([`Presence::topic_stats`]).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicStats {
    /// Unique users (what `count` returns).
    pub users: u64,
    /// Their connections (tabs), over every instance.
    pub connections: u64,
}

/// The counters behind [`Stats`].
#[derive(Default, Debug)]
pub(crate) struct Counters {
    joins: std::sync::atomic::AtomicU64,
    leaves: std::sync::atomic::AtomicU64,
    updates: std::sync::atomic::AtomicU64,
    pub(crate) resyncs: std::sync::atomic::AtomicU64,
    pub(crate) repairs: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            joins: read(&self.joins),
            leaves: read(&self.leaves),
            updates: read(&self.updates),
            resyncs: read(&self.resyncs),
            repairs: read(&self.repairs),
        }
    }
}

pub(crate) struct Inner {
    stats: Counters,
    backend: Arc<dyn Backend>,
    platform: Arc<dyn Platform>,
    options: Options,
    /// Topics with local interest, and lingering ones (see `linger`).
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    /// Which of `topics` nothing local uses any more. Locked after `topics`.
    lingering: Mutex<linger::Linger>,
    conns: Mutex<HashMap<ConnId, ConnTopics>>,
    destroyed: AtomicBool,
    /// Set when the backend's event stream (or one topic's) was interrupted;
    /// the resyncer takes it (several interruptions before it runs make one
    /// resync).
    resync_wanted: Arc<Notify>,
    /// Interruptions reported, and how many of them a finished resync covers.
    resyncs: events::ResyncCounts,
    /// Which topics count instead of listing members.
    count_rules: counting::CountRules,
    /// Count-only topics whose count changed since the last `count` event.
    counts_due: Mutex<std::collections::HashSet<String>>,
    counts_wanted: Arc<Notify>,
    /// Heartbeat ticks so far, and which topics each one verifies and renews.
    ticks: std::sync::atomic::AtomicU64,
    upkeep: upkeep::Upkeep,
    /// Whether the backend answers, as the engine's calls see it.
    outage: outage::Outage,
    /// How long the last heartbeat's refresh took, in microseconds.
    last_refresh_us: std::sync::atomic::AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Presence {
    /// Start an engine (inside a tokio runtime): validates `options`, takes the
    /// backend's event stream and starts the heartbeat.
    pub fn new(backend: Arc<dyn Backend>, platform: Arc<dyn Platform>, options: Options) -> Result<Self, Error> {
        options.validate()?;
        let events = backend.events().ok_or(Error::InvalidOption {
            name: "backend",
            reason: "its event stream is already used by another engine".into(),
        })?;
        let resync_wanted = Arc::new(Notify::new());
        let counts_wanted = Arc::new(Notify::new());
        let count_rules = counting::CountRules::new(options.count_only.clone());
        let upkeep = upkeep::Upkeep::new(options.heartbeat, options.ttl);
        // Long enough for a subscribe/unsubscribe loop, short enough that an
        // idle topic's watch and replica go soon (at the heartbeat after).
        let lingering = linger::Linger::new(options.heartbeat.clamp(Duration::from_secs(1), Duration::from_secs(5)));
        let inner = Arc::new(Inner {
            stats: Counters::default(),
            backend,
            platform,
            options,
            topics: Mutex::default(),
            lingering: Mutex::new(lingering),
            conns: Mutex::default(),
            destroyed: AtomicBool::new(false),
            resync_wanted: resync_wanted.clone(),
            resyncs: events::ResyncCounts::default(),
            count_rules,
            counts_due: Mutex::default(),
            counts_wanted: counts_wanted.clone(),
            ticks: Default::default(),
            upkeep,
            outage: Default::default(),
            last_refresh_us: Default::default(),
        });
        let supervisor = Arc::new(Supervisor::default());
        let events: events::Events = Arc::new(tokio::sync::Mutex::new(events));
        let weak = Arc::downgrade(&inner);
        supervisor.spawn("events", {
            let weak = weak.clone();
            move || Box::pin(events::pump(weak.clone(), events.clone()))
        });
        supervisor.spawn("resync", {
            let weak = weak.clone();
            move || Box::pin(events::resyncer(weak.clone(), resync_wanted.clone()))
        });
        supervisor.spawn("counts", {
            let (weak, window) = (weak.clone(), inner.options.count_window);
            let publish: fn(&Inner) = Inner::publish_counts;
            move || Box::pin(crate::window::flush_after_window(weak.clone(), counts_wanted.clone(), window, publish))
        });
        supervisor.spawn("heartbeat", move || Box::pin(heartbeat::run(weak.clone())));
        let lifetime = Arc::new(Lifetime { inner: inner.clone(), supervisor: supervisor.clone() });
        Ok(Self { inner, supervisor, lifetime })
    }

    /// The way to wire an engine: backend and platform now, then
    /// [`PresenceBuilder::options`] and [`PresenceBuilder::policy`] (a plugin
    /// host, connected both ways), then [`PresenceBuilder::build`].
    pub fn builder(backend: Arc<dyn Backend>, platform: Arc<dyn Platform>) -> PresenceBuilder<'static> {
        PresenceBuilder::new(backend, platform)
    }

    /// A handle that does not keep the engine alive.
    pub fn downgrade(&self) -> WeakPresence {
        WeakPresence(Arc::downgrade(&self.lifetime))
    }

    /// This instance's id (as the backend knows it).
    pub fn instance(&self) -> &str {
        self.inner.backend.instance()
    }

    /// Joins, leaves and updates shown to this instance's subscribers, and
    /// its resyncs and repairs, as of now.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// Whether the background tasks run and the backend can deliver events;
    /// `/readyz` is red while it is not ok.
    pub fn health(&self) -> Health {
        self.supervisor.health()
    }

    /// Why the engine cannot keep its promises right now, if it cannot: a
    /// background task is down, or the backend is degraded.
    pub fn unready_reason(&self) -> Option<String> {
        let health = self.health();
        if !health.is_ok() {
            return Some(format!("engine task down: {}", health.down.join(", ")));
        }
        self.inner.backend.degraded().or_else(|| {
            let down = self.inner.outage.is_down();
            down.then(|| "the backend does not answer: joins and leaves are kept until it does".into())
        })
    }

    /// True while the backend's event stream was interrupted and the replicas
    /// are not read again yet: changes made meanwhile may reach this
    /// instance's clients as one difference instead of one event each.
    pub fn is_resyncing(&self) -> bool {
        self.inner.resyncs.pending()
    }

    /// Users this instance shows, summed over its topics in use (a user in
    /// two topics counts twice), from its replicas: no round trip.
    pub fn local_users(&self) -> u64 {
        let topics: Vec<Arc<Topic>> = lock(&self.inner.topics).values().cloned().collect();
        let lingering = lock(&self.inner.lingering);
        topics.iter().filter(|t| !lingering.contains(&t.name)).map(|t| t.lock().replica.len() as u64).sum()
    }

    /// How long the last heartbeat's refresh took (zero before the first).
    pub fn last_heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.inner.last_refresh_us.load(Ordering::Relaxed))
    }

    /// Local connections the engine tracks (joined or observing). A
    /// connection the platform lost is counted until the heartbeat leaves it.
    pub fn connections(&self) -> usize {
        lock(&self.inner.conns).len()
    }

    /// Topics this instance has local interest in (not counting the idle
    /// ones that linger for a moment, still watched).
    pub fn local_topics(&self) -> usize {
        let topics = lock(&self.inner.topics);
        topics.len() - lock(&self.inner.lingering).len()
    }

    /// Idle topics kept watched for a moment, in case they are used again.
    pub fn lingering_topics(&self) -> usize {
        lock(&self.inner.lingering).len()
    }

    /// The options it runs with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// Run an operation to completion even if the caller stops waiting: in
    /// place while the caller polls, on the runtime once it gives up.
    async fn detached<T, F>(&self, op: impl FnOnce(Arc<Inner>) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.detached_or(op, |_, _| {}).await
    }

    /// [`Presence::detached`], and if the caller gave up before a refusal
    /// came back, `unheard` is told of it (nobody else will be).
    async fn detached_or<T, F>(
        &self,
        op: impl FnOnce(Arc<Inner>) -> F,
        unheard: impl FnOnce(&Inner, Error) + Send + 'static,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        let op = op(inner.clone());
        finish::Finish::new(async move {
            if let Err(Err(refused)) = tx.send(op.await) {
                if !matches!(refused, Error::Deferred(_)) {
                    unheard(&inner, refused);
                }
            }
        })
        .await;
        rx.await.unwrap_or(Err(Error::Destroyed))
    }

    /// Add a connection to a topic's presence. The connection is subscribed to
    /// `__presence:<topic>` and receives the `list`; others see `join` if this
    /// is the user's first connection anywhere, `updated` if its public data
    /// changed. Topics starting with `__` are ignored; joining twice is a no-op.
    ///
    /// A refusal (invalid topic, `select` error, data too large) changes
    /// nothing. If the backend cannot be reached now, [`Error::Deferred`] is
    /// returned and the join is kept: the heartbeat makes it once the backend
    /// answers, and the connection then gets its `list`.
    pub async fn join(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        let name = topic.to_owned();
        let topic = name.clone();
        // A caller that stopped waiting (a plugin hook out of time) has told
        // its client nothing final: the platform hears of a late refusal.
        self.detached_or(
            move |inner| async move { inner.join(conn, &topic, None).await },
            move |inner, refused| inner.platform.refused(conn, &name, &refused),
        )
        .await
    }

    /// [`Presence::join`] with public data the caller's own `select` made
    /// (JSON text): the engine's `select` is not asked. Checked as `select`'s
    /// output is (JSON, within `max_data_bytes`); the user key still comes
    /// from the connection's raw user data.
    pub async fn join_with_data(&self, conn: ConnId, topic: &str, public: String) -> Result<(), Error> {
        let name = topic.to_owned();
        let topic = name.clone();
        self.detached_or(
            move |inner| async move { inner.join(conn, &topic, Some(public)).await },
            move |inner, refused| inner.platform.refused(conn, &name, &refused),
        )
        .await
    }

    /// Remove a connection from one topic. Unknown connections and topics
    /// are a no-op. The connection is always removed locally; a backend
    /// error is returned after the heartbeat has been left to finish the
    /// release.
    pub async fn leave(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        let topic = topic.to_owned();
        self.detached(move |inner| async move { inner.leave_topic(conn, &topic).await }).await
    }

    /// Remove a connection from every topic and stop its observing (what a
    /// closed connection needs), as [`Presence::leave`] does for one.
    pub async fn leave_all(&self, conn: ConnId) -> Result<(), Error> {
        self.detached(move |inner| async move { inner.leave_all(conn).await }).await
    }

    /// Send the topic's `list` to a connection without joining; it then
    /// receives the topic's events. If the backend cannot be reached now,
    /// [`Error::Deferred`] is returned and the connection is kept as an
    /// observer: it gets the list once the backend answers.
    pub async fn sync(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        let topic = topic.to_owned();
        self.detached(move |inner| async move { inner.sync(conn, &topic).await }).await
    }

    /// Send the topic's `list` again to a connection that joined or observes
    /// it (a client asking for a fresh snapshot); otherwise nothing.
    pub fn resend_list(&self, conn: ConnId, topic: &str) {
        self.inner.resend_list(conn, topic);
    }

    /// Stop a connection observing a topic it `sync`ed.
    pub fn unsync(&self, conn: ConnId, topic: &str) {
        self.inner.unobserve(conn, topic);
    }

    /// The topic's current members, across every instance.
    pub async fn list(&self, topic: &str) -> Result<Vec<Member>, Error> {
        self.inner.check(topic)?;
        let snapshot = self.inner.backend.snapshot(topic, 0).await?;
        Ok(snapshot
            .users
            .into_iter()
            .map(|(key, data)| Member { key, data: serde_json::from_str(&data).unwrap_or(Value::Null) })
            .collect())
    }

    /// How many unique users are present on the topic, across every instance.
    pub async fn count(&self, topic: &str) -> Result<u64, Error> {
        self.inner.check(topic)?;
        Ok(self.inner.backend.count(topic).await?)
    }

    /// A topic's unique users and connections across every instance, counted
    /// by the store without reading its members (O(1) in them). This
    /// instance's connections are exact; another instance's are as of its
    /// last heartbeat.
    ///
    /// ```
    /// # use presence::backend::memory::MemoryStore;
    /// # use presence::{Hub, Presence, TopicStats};
    /// # use std::sync::Arc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), presence::Error> {
    /// # let hub = Hub::new();
    /// # let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), hub.clone()).build()?;
    /// let (tab1, _) = hub.connect(serde_json::json!({"id": "ada"}), 1 << 20);
    /// let (tab2, _) = hub.connect(serde_json::json!({"id": "ada"}), 1 << 20);
    /// presence.join(tab1, "lobby").await?;
    /// presence.join(tab2, "lobby").await?;
    /// assert_eq!(presence.topic_stats("lobby").await?, TopicStats { users: 1, connections: 2 });
    /// # Ok(())
    /// # }
    /// ```
    pub async fn topic_stats(&self, topic: &str) -> Result<TopicStats, Error> {
        self.inner.check(topic)?;
        let counts = self.inner.backend.stats(topic).await?;
        let local = lock(&self.inner.topics).get(topic).map_or(0, |t| t.lock().connections as u64);
        Ok(TopicStats {
            users: counts.users,
            connections: counts.connections.saturating_sub(counts.own_connections) + local,
        })
    }

    /// Reset all presence state, in the backend and on every instance: every
    /// connection and observer is unsubscribed; later joins start afresh.
    pub async fn clear(&self) -> Result<(), Error> {
        self.inner.check_alive()?;
        self.detached(|inner| async move {
            inner.backend.clear().await?;
            let topics: Vec<String> = lock(&inner.topics).keys().cloned().collect();
            for topic in topics {
                inner.clear_local(&topic);
            }
            Ok(())
        })
        .await
    }

    /// Stop the heartbeat and the subscriber, for every handle; holds are
    /// left to expire.
    pub fn destroy(&self) {
        stop(&self.inner, &self.supervisor);
    }

    /// [`Presence::destroy`], then wait until the background tasks are gone.
    pub async fn shutdown(self) {
        self.destroy();
        self.supervisor.wait_stopped().await;
    }

    /// Run one heartbeat now (refresh holds, settle, repair, announce).
    pub async fn tick(&self) {
        self.inner.tick().await;
    }

    /// Leave every local user (for a graceful shutdown: other instances see
    /// the leaves at once instead of after `ttl`).
    pub async fn leave_everyone(&self) {
        let conns: Vec<ConnId> = lock(&self.inner.conns).keys().copied().collect();
        for conn in conns {
            let _ = self.leave_all(conn).await;
        }
    }

    /// Send an envelope to every local subscriber of `topic`.
    pub fn publish(&self, topic: &str, envelope: &Envelope) {
        self.inner.platform.publish(topic, envelope);
    }

    /// Send an envelope to one local connection.
    pub fn send(&self, conn: ConnId, envelope: &Envelope) {
        self.inner.platform.send(conn, envelope);
    }

    /// Make topics starting with `prefix` count-only beyond `above` members
    /// (`None`: remove the rule), on this instance, as the
    /// [`Options::count_only`] rules do; the longest matching prefix wins.
    ///
    /// A count-only topic shows its subscribers on `__presence:<topic>` its
    /// number of users instead of its members: `{"event":"count","data":N}`,
    /// at most once per [`Options::count_window`], and no member events or
    /// heartbeat envelopes, so a topic of 100,000 users costs each subscriber
    /// one small frame per window. A topic enters the mode when it lists more
    /// than `above` users (its subscribers are then sent an empty list, then
    /// the count) and leaves it at a tenth below (they are sent the full
    /// list), so a room at the edge does not flap. A rule applies to a topic
    /// from its next change. Plugins set rules with `presence.count-only`.
    ///
    /// ```
    /// # use presence::backend::memory::MemoryStore;
    /// # use presence::{Hub, Presence};
    /// # use std::sync::Arc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), presence::Error> {
    /// # let hub = Hub::new();
    /// # let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), hub.clone()).build()?;
    /// presence.set_count_only("stadium:", Some(1))?;
    /// let (fan, mut frames) = hub.connect(serde_json::json!({"id": "fan"}), 1 << 20);
    /// let (other, _) = hub.connect(serde_json::json!({"id": "other"}), 1 << 20);
    /// presence.join(fan, "stadium:final").await?;
    /// presence.join(other, "stadium:final").await?; // 2 users: more than 1
    /// let _list = frames.try_recv();
    /// let empty = frames.try_recv().expect("an empty list replaces the members");
    /// assert!(empty.contains(r#""event":"list","data":[]"#));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_count_only(&self, prefix: &str, above: Option<u64>) -> Result<(), Error> {
        self.inner.options.check_count_prefix(prefix)?;
        if !self.inner.count_rules.set(prefix, above) {
            let reason = format!("at most {} rules", counting::MAX_RULES);
            return Err(Error::InvalidOption { name: "count_only", reason });
        }
        Ok(())
    }

    /// The ready-made hooks: `subscribe`, `unsubscribe`, `close`.
    pub fn hooks(&self) -> Hooks<'_> {
        Hooks { presence: self }
    }
}

impl Inner {
    fn check_alive(&self) -> Result<(), Error> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(Error::Destroyed);
        }
        Ok(())
    }

    fn check(&self, topic: &str) -> Result<(), Error> {
        self.check_alive()?;
        let invalid = |reason| Err(Error::InvalidTopic { topic: topic.chars().take(64).collect(), reason });
        if topic.is_empty() {
            return invalid("empty");
        }
        if topic.len() > self.options.max_topic_bytes {
            return invalid("longer than the topic limit");
        }
        Ok(())
    }

    /// The dedup key: the user data's `key` field; without one, the
    /// connection is its own user.
    fn user_key(&self, conn: ConnId, user_data: &Value) -> String {
        match user_data.get(&self.options.key) {
            Some(Value::String(key)) => key.clone(),
            None | Some(Value::Null) => format!("__conn:{}:{conn}", self.backend.instance()),
            Some(other) => other.to_string(),
        }
    }

    /// `select` applied and checked: public data as JSON text.
    async fn public_data(&self, user_data: Value) -> Result<String, Error> {
        let public = match &self.options.select {
            Some(select) => select(user_data).await,
            None => select::default_select(&user_data),
        }
        .map_err(Error::Select)?;
        let json = serde_json::to_string(&public).map_err(|e| Error::Select(e.to_string()))?;
        self.within_data_limit(json)
    }

    /// Public data a caller produced: JSON, within `max_data_bytes`.
    fn checked_public_data(&self, json: String) -> Result<String, Error> {
        let json = self.within_data_limit(json)?;
        serde_json::from_str::<&serde_json::value::RawValue>(&json)
            .map_err(|e| Error::Select(format!("the public data is not JSON: {e}")))?;
        Ok(json)
    }

    fn within_data_limit(&self, json: String) -> Result<String, Error> {
        if json.len() > self.options.max_data_bytes {
            return Err(Error::DataTooLarge { size: json.len(), limit: self.options.max_data_bytes });
        }
        Ok(json)
    }

    /// Tell the topic's local subscribers about a change its replica shows:
    /// the change itself, or, for a count-only topic, its count (soon).
    fn announce(&self, topic: &str, state: &mut TopicState, kind: ChangeKind, key: &str, data: &str) {
        let counter = match kind {
            ChangeKind::Join => &self.stats.joins,
            ChangeKind::Leave => &self.stats.leaves,
            ChangeKind::Updated => &self.stats.updates,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match state.counting.update(&self.count_rules, topic, state.replica.len()) {
            Mode::Members => {
                self.platform.publish(&presence_topic(topic), &Envelope::member(topic, kind.event(), key, data))
            }
            Mode::Counting => self.count_due(topic),
            Mode::Entered => {
                self.platform.publish_list(topic, &Members::none());
                self.count_due(topic);
            }
            Mode::Left => self.platform.publish_list(topic, &Members::new(&state.replica)),
        }
    }

    /// Apply a change this instance made (or learned) to the replica and show
    /// clients what it changed for them, if anything.
    fn show(&self, topic: &str, state: &mut TopicState, seq: u64, kind: ChangeKind, key: &str, data: &str) {
        if let Some((kind, data)) = state.replica.apply(seq, kind, key, data) {
            self.announce(topic, state, kind, key, &data);
        }
    }

    /// A `count` event is owed to the topic's subscribers.
    fn count_due(&self, topic: &str) {
        // Every change of a busy count-only topic lands here: the name is
        // copied only by the first change of a window.
        let mut due = lock(&self.counts_due);
        if !due.contains(topic) {
            due.insert(topic.to_owned());
            self.counts_wanted.notify_one();
        }
    }
}
