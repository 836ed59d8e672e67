//! The presence engine: the seed's API (`join`, `leave`, `sync`, `list`,
//! `count`, `clear`, `destroy`, hooks) over a [`Backend`], talking to clients
//! through a [`Platform`].
//!
//! Only a user's first local connection on a topic and its last one reach the
//! backend (one round trip each); the rest is local bookkeeping. Each topic
//! with local interest has a replica of its members, seeded by a snapshot and
//! kept by events, so a joiner's `list` costs no round trip.

mod envelope;
mod error;
mod events;
mod heartbeat;
mod options;
mod platform;
mod replica;
pub mod select;
mod topic;

pub use envelope::{presence_topic, Envelope, PRESENCE_PREFIX};
pub use error::Error;
pub use options::{select_fn, Options, SelectFn};
pub use platform::{ConnId, Platform};

use crate::backend::{Backend, BackendError, ChangeKind, JoinOutcome, LeaveOutcome};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::task::JoinHandle;
use topic::{ConnTopics, Remote, Topic, TopicState};

/// One member of a topic, as `list` returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub key: String,
    pub data: Value,
}

/// A presence engine for one instance. Dropping it (or [`Presence::destroy`])
/// stops its heartbeat and event tasks; its holds then expire after `ttl`.
pub struct Presence {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// What this instance showed its local subscribers, by event.
#[derive(Default, Debug)]
pub struct Stats {
    pub joins: std::sync::atomic::AtomicU64,
    pub leaves: std::sync::atomic::AtomicU64,
    pub updates: std::sync::atomic::AtomicU64,
}

pub(crate) struct Inner {
    stats: Stats,
    backend: Arc<dyn Backend>,
    platform: Arc<dyn Platform>,
    options: Options,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    conns: Mutex<HashMap<ConnId, ConnTopics>>,
    destroyed: AtomicBool,
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
        let inner = Arc::new(Inner {
            stats: Stats::default(),
            backend,
            platform,
            options,
            topics: Mutex::default(),
            conns: Mutex::default(),
            destroyed: AtomicBool::new(false),
        });
        let tasks = vec![
            tokio::spawn(events::pump(Arc::downgrade(&inner), events)),
            tokio::spawn(heartbeat::run(Arc::downgrade(&inner))),
        ];
        Ok(Self { inner, tasks })
    }

    /// This instance's id (as the backend knows it).
    pub fn instance(&self) -> &str {
        self.inner.backend.instance()
    }

    /// Joins, leaves and updates shown to this instance's subscribers.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Topics this instance has local interest in.
    pub fn local_topics(&self) -> usize {
        lock(&self.inner.topics).len()
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// Add a connection to a topic's presence. The connection is subscribed to
    /// `__presence:<topic>` and receives the `list`; others see `join` if this
    /// is the user's first connection anywhere, `updated` if its public data
    /// changed. Topics starting with `__` are ignored; joining twice is a no-op.
    /// On error nothing changed, locally or in the backend.
    pub async fn join(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        self.inner.join(conn, topic).await
    }

    /// Remove a connection from one topic, or from every topic (and stop its
    /// observing) with `None`. Unknown connections and topics are a no-op.
    /// The connection is always removed locally; a backend error is returned
    /// after the heartbeat has been left to finish the release.
    pub async fn leave(&self, conn: ConnId, topic: Option<&str>) -> Result<(), Error> {
        match topic {
            Some(topic) => self.inner.leave_topic(conn, topic).await,
            None => self.inner.leave_all(conn).await,
        }
    }

    /// Send the topic's `list` to a connection without joining; it then
    /// receives the topic's events.
    pub async fn sync(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        self.inner.sync(conn, topic).await
    }

    /// Stop a connection observing a topic it `sync`ed.
    pub async fn unsync(&self, conn: ConnId, topic: &str) {
        self.inner.unobserve(conn, topic);
    }

    /// The topic's current members, across every instance.
    pub async fn list(&self, topic: &str) -> Result<Vec<Member>, Error> {
        self.inner.check(topic)?;
        let snapshot = self.inner.backend.snapshot(topic).await?;
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

    /// Reset all presence state, in the backend and on every instance: every
    /// connection and observer is unsubscribed; later joins start afresh.
    pub async fn clear(&self) -> Result<(), Error> {
        self.inner.check_alive()?;
        self.inner.backend.clear().await?;
        let topics: Vec<String> = lock(&self.inner.topics).keys().cloned().collect();
        for topic in topics {
            self.inner.clear_local(&topic);
        }
        Ok(())
    }

    /// Stop the heartbeat and the subscriber; holds are left to expire.
    pub fn destroy(&self) {
        self.inner.destroyed.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
        self.inner.backend.shutdown();
    }

    /// Run one heartbeat now (refresh holds, sweep, re-assert, announce).
    pub async fn tick(&self) {
        self.inner.tick().await;
    }

    /// Leave every local user (for a graceful shutdown: other instances see
    /// the leaves at once instead of after `ttl`).
    pub async fn leave_everyone(&self) {
        let conns: Vec<ConnId> = lock(&self.inner.conns).keys().copied().collect();
        for conn in conns {
            let _ = self.inner.leave_all(conn).await;
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

    /// The ready-made hooks: `subscribe`, `unsubscribe`, `close`.
    pub fn hooks(&self) -> Hooks<'_> {
        Hooks { presence: self }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The seed's hooks, routing a connection's subscriptions to the engine.
pub struct Hooks<'a> {
    presence: &'a Presence,
}

impl Hooks<'_> {
    /// `__presence:<t>` → sync `t`; other `__` topics → ignored; else join.
    pub async fn subscribe(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        match topic.strip_prefix(PRESENCE_PREFIX) {
            Some(watched) => self.presence.sync(conn, watched).await,
            None if topic.starts_with("__") => Ok(()),
            None => self.presence.join(conn, topic).await,
        }
    }

    /// `__presence:<t>` → stop observing `t`; other `__` topics → ignored;
    /// else leave that topic.
    pub async fn unsubscribe(&self, conn: ConnId, topic: &str) -> Result<(), Error> {
        match topic.strip_prefix(PRESENCE_PREFIX) {
            Some(watched) => {
                self.presence.unsync(conn, watched).await;
                Ok(())
            }
            None if topic.starts_with("__") => Ok(()),
            None => self.presence.leave(conn, Some(topic)).await,
        }
    }

    /// Leave every topic.
    pub async fn close(&self, conn: ConnId) -> Result<(), Error> {
        self.presence.leave(conn, None).await
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
        if json.len() > self.options.max_data_bytes {
            return Err(Error::DataTooLarge { size: json.len(), limit: self.options.max_data_bytes });
        }
        Ok(json)
    }

    /// The topic, watched and seeded; created if needed.
    async fn ready_topic(&self, name: &str) -> Result<Arc<Topic>, Error> {
        let topic = lock(&self.topics).entry(name.to_owned()).or_insert_with(|| Arc::new(Topic::new(name))).clone();
        topic
            .ready
            .get_or_try_init(|| async {
                // Watch before reading, so no change between the two is missed.
                self.backend.watch(name).await?;
                let snapshot = self.backend.snapshot(name).await?;
                let mut state = topic.lock();
                state.epoch = snapshot.epoch.clone();
                for (kind, key, data) in state.replica.install(&snapshot) {
                    self.announce(name, kind, &key, &data);
                }
                Ok::<_, BackendError>(())
            })
            .await?;
        Ok(topic)
    }

    /// Tell the topic's local subscribers about a change.
    fn announce(&self, topic: &str, kind: ChangeKind, key: &str, data: &str) {
        let counter = match kind {
            ChangeKind::Join => &self.stats.joins,
            ChangeKind::Leave => &self.stats.leaves,
            ChangeKind::Updated => &self.stats.updates,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.platform.publish(&presence_topic(topic), &Envelope::member(topic, kind.event(), key, data));
    }

    /// Apply a change this instance made (or learned) and show it if new.
    fn show(&self, topic: &str, state: &mut TopicState, seq: u64, kind: ChangeKind, key: &str, data: &str) {
        if state.replica.apply(seq, kind, key, data) {
            self.announce(topic, kind, key, data);
        }
    }

    fn show_join(&self, topic: &Topic, key: &str, data: &str, outcome: &JoinOutcome) {
        let (seq, kind) = match outcome {
            JoinOutcome::Joined { seq } => (*seq, ChangeKind::Join),
            JoinOutcome::Updated { seq } => (*seq, ChangeKind::Updated),
            _ => return,
        };
        let mut state = topic.lock();
        if !state.detached {
            self.show(&topic.name, &mut state, seq, kind, key, data);
        }
    }

    async fn join(&self, conn: ConnId, name: &str) -> Result<(), Error> {
        self.check(name)?;
        if name.starts_with("__") || lock(&self.conns).get(&conn).is_some_and(|c| c.joined.contains_key(name)) {
            return Ok(());
        }
        let user_data = self.platform.user_data(conn).ok_or(Error::UnknownConnection(conn))?;
        let key = self.user_key(conn, &user_data);
        let data = self.public_data(user_data).await?;
        // A second pass only follows a join refused because the topic was cleared.
        for _ in 0..2 {
            let topic = self.ready_topic(name).await?;
            let Some(slot) = topic.slot(&key) else {
                continue;
            };
            let mut slot = slot.lock().await;
            if slot.conns.iter().any(|(c, _)| *c == conn) {
                return Ok(());
            }
            if slot.remote != Remote::Held || slot.shown.as_deref() != Some(data.as_str()) {
                let epoch = topic.epoch();
                match self.backend.join(name, &key, &data, epoch.as_deref(), self.options.ttl).await {
                    Ok(JoinOutcome::StaleEpoch { .. }) => {
                        drop(slot);
                        self.clear_local(name);
                        continue;
                    }
                    Ok(outcome) => {
                        slot.remote = Remote::Held;
                        slot.shown = Some(data.clone());
                        self.show_join(&topic, &key, &data, &outcome);
                    }
                    Err(e) => {
                        // No local trace; a hold the call may have taken is
                        // released by the heartbeat (or kept, if others remain).
                        if e.outcome_unknown() && slot.remote == Remote::Absent {
                            slot.remote = Remote::Unknown;
                        }
                        drop(slot);
                        topic.forget_slot(&key);
                        return Err(e.into());
                    }
                }
            }
            let state = topic.lock();
            if state.detached {
                return Ok(()); // cleared meanwhile: the join is gone with everything else
            }
            slot.conns.push((conn, data));
            lock(&self.conns).entry(conn).or_default().joined.insert(name.to_owned(), key);
            self.platform.subscribe(conn, &presence_topic(name));
            self.platform.send(conn, &Envelope::list(name, state.replica.list_json()));
            return Ok(());
        }
        Err(Error::Backend(BackendError::Protocol {
            op: "join",
            reason: "the topic was cleared twice while joining".into(),
        }))
    }

    async fn leave_all(&self, conn: ConnId) -> Result<(), Error> {
        let Some(entry) = lock(&self.conns)
            .get(&conn)
            .map(|c| (c.joined.keys().cloned().collect::<Vec<_>>(), c.observing.iter().cloned().collect::<Vec<_>>()))
        else {
            return Ok(());
        };
        let (joined, observing) = entry;
        let mut first_error = None;
        for topic in joined {
            if let Err(e) = self.leave_topic(conn, &topic).await {
                first_error.get_or_insert(e);
            }
        }
        for topic in observing {
            self.unobserve(conn, &topic);
        }
        lock(&self.conns).remove(&conn);
        first_error.map_or(Ok(()), Err)
    }

    async fn leave_topic(&self, conn: ConnId, name: &str) -> Result<(), Error> {
        let Some(key) = lock(&self.conns).get(&conn).and_then(|c| c.joined.get(name).cloned()) else {
            return Ok(());
        };
        let topic = lock(&self.topics).get(name).cloned();
        let slot = topic.as_ref().and_then(|t| t.existing_slot(&key));
        let (Some(topic), Some(slot)) = (topic, slot) else {
            self.forget_join(conn, name);
            return Ok(());
        };
        let mut slot = slot.lock().await;
        let Some(position) = slot.conns.iter().position(|(c, _)| *c == conn) else {
            return Ok(());
        };
        slot.conns.remove(position);
        {
            let state = topic.lock();
            if !state.observers.contains(&conn) {
                self.platform.unsubscribe(conn, &presence_topic(name));
            }
            self.forget_join(conn, name);
        }
        let result = match slot.wanted().map(str::to_owned) {
            None if slot.remote == Remote::Absent => Ok(()),
            None => match self.backend.leave(name, &key).await {
                Ok(outcome) => {
                    slot.remote = Remote::Absent;
                    slot.shown = None;
                    if let LeaveOutcome::Left { seq, data } = outcome {
                        let mut state = topic.lock();
                        if !state.detached {
                            self.show(name, &mut state, seq, ChangeKind::Leave, &key, &data);
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    slot.remote = Remote::Unknown;
                    Err(e.into())
                }
            },
            // Other tabs remain: restore the newest one's data if it differs.
            Some(wanted) if slot.shown.as_deref() != Some(wanted.as_str()) && slot.remote == Remote::Held => {
                let epoch = topic.epoch();
                match self.backend.join(name, &key, &wanted, epoch.as_deref(), self.options.ttl).await {
                    Ok(outcome) => {
                        slot.shown = Some(wanted.clone());
                        self.show_join(&topic, &key, &wanted, &outcome);
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Some(_) => Ok(()),
        };
        drop(slot);
        topic.forget_slot(&key);
        drop(topic);
        self.forget_topic_if_idle(name);
        result
    }

    fn forget_join(&self, conn: ConnId, topic: &str) {
        let mut conns = lock(&self.conns);
        if let Some(entry) = conns.get_mut(&conn) {
            entry.joined.remove(topic);
            if entry.is_empty() {
                conns.remove(&conn);
            }
        }
    }

    async fn sync(&self, conn: ConnId, name: &str) -> Result<(), Error> {
        self.check(name)?;
        if name.starts_with("__") {
            return Ok(());
        }
        for _ in 0..2 {
            let topic = self.ready_topic(name).await?;
            let mut state = topic.lock();
            if state.detached {
                continue;
            }
            state.observers.insert(conn);
            lock(&self.conns).entry(conn).or_default().observing.insert(name.to_owned());
            self.platform.subscribe(conn, &presence_topic(name));
            self.platform.send(conn, &Envelope::list(name, state.replica.list_json()));
            return Ok(());
        }
        Ok(())
    }

    fn unobserve(&self, conn: ConnId, name: &str) {
        if let Some(topic) = lock(&self.topics).get(name).cloned() {
            let mut state = topic.lock();
            state.observers.remove(&conn);
            let mut conns = lock(&self.conns);
            let joined = conns.get(&conn).is_some_and(|c| c.joined.contains_key(name));
            if !joined {
                self.platform.unsubscribe(conn, &presence_topic(name));
            }
            if let Some(entry) = conns.get_mut(&conn) {
                entry.observing.remove(name);
                if entry.is_empty() {
                    conns.remove(&conn);
                }
            }
        }
        self.forget_topic_if_idle(name);
    }

    /// Stop watching a topic nothing local uses any more.
    fn forget_topic_if_idle(&self, name: &str) {
        let mut topics = lock(&self.topics);
        if let Some(topic) = topics.get(name) {
            if Arc::strong_count(topic) == 1 && topic.is_idle() {
                topics.remove(name);
                // Sent under the map lock: a later watch of the same topic is
                // queued after this unwatch.
                self.backend.unwatch(name);
            }
        }
    }

    /// Drop everything local about a topic (it was cleared): connections and
    /// observers are unsubscribed from its presence events.
    fn clear_local(&self, name: &str) {
        let topic = {
            let mut topics = lock(&self.topics);
            let Some(topic) = topics.remove(name) else {
                return;
            };
            self.backend.unwatch(name);
            topic
        };
        let mut state = topic.lock();
        state.detached = true;
        state.slots.clear();
        let observers = std::mem::take(&mut state.observers);
        let presence = presence_topic(name);
        let mut conns = lock(&self.conns);
        conns.retain(|conn, entry| {
            let joined = entry.joined.remove(name).is_some();
            let observed = entry.observing.remove(name);
            if joined || observed || observers.contains(conn) {
                self.platform.unsubscribe(*conn, &presence);
            }
            !entry.is_empty()
        });
    }
}
