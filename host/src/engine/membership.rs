//! Membership transitions: connections joining and leaving topics, observers
//! coming and going, and a topic dropped by `clear()`.
//!
//! Every change of a user's hold goes through one path. A transition first
//! edits the user's [`Slot`] (its local connections), then [`Inner::reconcile`]
//! asks the slot what the store must be told ([`Slot::needed`]: assert or
//! release) and [`Inner::record`] applies the store's answer to the slot, the
//! replica and the clients. `join`, `leave_topic`, `leave_all`, the restore of
//! a remaining tab's data and the heartbeat's settle all use it.
//!
//! A join the store cannot take *for a passing reason* (timeout, Redis down) is
//! not dropped: the connection stays wanted and the heartbeat asserts it once
//! the store answers ([`Error::Deferred`]); the joiner then gets its `list`.
//! Only a refusal (invalid input, a `select` error, a protocol error) undoes it.

use super::topic::{Needed, Remote, Slot, SlotConn, Topic, TopicState};
use super::{lock, presence_topic, ConnId, Envelope, Error, Inner, Members};
use crate::backend::{BackendError, ChangeKind, HoldChange, HoldOutcome, HoldTerms, JoinOutcome, LeaveOutcome};
use std::sync::Arc;

/// What became of a topic after a hold change.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settled {
    Done,
    /// The topic was cleared meanwhile: the caller drops it locally.
    Cleared,
    /// A new user was refused: the topic lists `members` users, its cap.
    Full {
        members: u64,
    },
}

impl Needed {
    pub(super) fn as_change<'a>(&'a self, key: &'a str) -> HoldChange<'a> {
        match self {
            Needed::Assert(data) => HoldChange::Assert { key, data },
            Needed::Release => HoldChange::Release { key },
        }
    }
}

impl Inner {
    /// The terms of every hold this instance takes.
    pub(super) fn terms(&self) -> HoldTerms {
        HoldTerms { ttl: self.options.ttl, max_members: self.options.max_members_per_topic }
    }

    /// Refuse a topic new to the connection beyond its cap, or new to this
    /// instance beyond the instance's.
    fn check_topic_caps(&self, conn: ConnId, name: &str) -> Result<(), Error> {
        if let Some(entry) = lock(&self.conns).get(&conn) {
            let uses = entry.joined.contains_key(name) || entry.observing.contains(name);
            let distinct =
                entry.joined.len() + entry.observing.iter().filter(|t| !entry.joined.contains_key(*t)).count();
            let limit = self.options.max_topics_per_connection;
            if !uses && distinct >= limit {
                return Err(Error::TooManyTopicsForConnection { conn, limit });
            }
        }
        let topics = lock(&self.topics);
        let lingering = lock(&self.lingering);
        let limit = self.options.max_topics_per_instance;
        let in_use = topics.contains_key(name) && !lingering.contains(name);
        if !in_use && topics.len() - lingering.len() >= limit {
            return Err(Error::TooManyTopics { limit });
        }
        Ok(())
    }

    /// The topic's entry, created if needed (not necessarily watched yet); a
    /// lingering topic is in use again.
    pub(super) fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = lock(&self.topics);
        let topic = topics.entry(name.to_owned()).or_insert_with(|| Arc::new(Topic::new(name))).clone();
        lock(&self.lingering).stop(name);
        topic
    }

    /// Watch the topic and seed its replica, once; then list the observers
    /// whose `sync` had to wait for it.
    pub(super) async fn ready(&self, topic: &Topic) -> Result<(), BackendError> {
        if !topic.ready.initialized() && !self.outage.may_call() {
            return Err(self.outage.refusal("subscribe"));
        }
        let seeded = topic
            .ready
            .get_or_try_init(|| async {
                // Watch before reading, so no change between the two is missed.
                let watched = self.backend.watch(&topic.name).await;
                self.outage.observe(&watched);
                watched?;
                let snapshot = self.backend.snapshot(&topic.name, 0).await;
                self.outage.observe(&snapshot);
                let snapshot = snapshot?;
                let mut state = topic.lock();
                state.epoch = snapshot.epoch.clone();
                state.heard.read(snapshot.seq);
                for (kind, key, data) in state.replica.install(&snapshot) {
                    self.announce(&topic.name, &mut state, kind, &key, &data);
                }
                Ok(())
            })
            .await
            .copied();
        if seeded.is_ok() {
            self.list_waiting_observers(topic);
        }
        seeded
    }

    /// Observers whose `sync` met a backend that could not answer get the
    /// list now that the topic is ready, and its events from here on.
    fn list_waiting_observers(&self, topic: &Topic) {
        let mut state = topic.lock();
        if state.detached || state.unlisted_observers.is_empty() {
            return;
        }
        for conn in std::mem::take(&mut state.unlisted_observers) {
            self.platform.subscribe(conn, &presence_topic(&topic.name));
            self.send_list(conn, &topic.name, &state);
        }
    }

    /// Bring one user's hold in line with its local connections.
    pub(super) async fn reconcile(&self, topic: &Topic, key: &str, slot: &mut Slot) -> Result<Settled, BackendError> {
        let Some(needed) = slot.needed() else {
            return Ok(Settled::Done);
        };
        if !self.outage.may_call() {
            // Nothing was sent: the slot still says what is owed, for the
            // heartbeat to settle once the backend answers.
            return Err(self.outage.refusal(if matches!(needed, Needed::Release) { "leave" } else { "join" }));
        }
        let epoch = topic.epoch();
        let outcome = match &needed {
            Needed::Assert(data) => self
                .backend
                .join(&topic.name, key, data, epoch.as_deref(), self.terms())
                .await
                .map(HoldOutcome::Asserted),
            Needed::Release => self.backend.leave(&topic.name, key).await.map(HoldOutcome::Released),
        };
        self.outage.observe(&outcome);
        self.record(topic, key, slot, needed, outcome)
    }

    /// Apply what the store did with a hold change to the slot, the replica
    /// and the clients. A call whose outcome is unknown leaves the slot
    /// `Unknown`, for the heartbeat to settle.
    pub(super) fn record(
        &self,
        topic: &Topic,
        key: &str,
        slot: &mut Slot,
        needed: Needed,
        outcome: Result<HoldOutcome, BackendError>,
    ) -> Result<Settled, BackendError> {
        match outcome {
            Ok(HoldOutcome::Asserted(JoinOutcome::StaleEpoch { .. })) => Ok(Settled::Cleared),
            Ok(HoldOutcome::Asserted(JoinOutcome::Full { members })) => Ok(Settled::Full { members }),
            Ok(HoldOutcome::Asserted(outcome)) => {
                let Needed::Assert(data) = needed else { unreachable!("an assert answers an assert") };
                slot.remote = Remote::Held;
                let shown = match outcome {
                    JoinOutcome::Joined { seq } => Some((seq, ChangeKind::Join)),
                    JoinOutcome::Updated { seq } => Some((seq, ChangeKind::Updated)),
                    _ => None,
                };
                let mut state = topic.lock();
                if let Some((seq, kind)) = shown.filter(|_| !state.detached) {
                    self.show(&topic.name, &mut state, seq, kind, key, &data);
                }
                slot.shown = Some(data);
                // Connections whose join the store could not take at first
                // get their list now, after their own join was shown.
                self.list_pending(&topic.name, &state, slot);
                Ok(Settled::Done)
            }
            Ok(HoldOutcome::Released(outcome)) => {
                slot.remote = Remote::Absent;
                slot.shown = None;
                if let LeaveOutcome::Left { seq, data } = outcome {
                    let mut state = topic.lock();
                    if !state.detached {
                        self.show(&topic.name, &mut state, seq, ChangeKind::Leave, key, &data);
                    }
                }
                Ok(Settled::Done)
            }
            Err(e) => {
                if e.outcome_unknown() {
                    slot.remote = Remote::Unknown;
                }
                Err(e)
            }
        }
    }

    /// Send the topic's `list` (its members now) to one connection; for a
    /// count-only topic, an empty one and the count.
    fn send_list(&self, conn: ConnId, name: &str, state: &TopicState) {
        if state.counting.active() {
            self.platform.send_list(conn, name, &Members::none());
            self.platform.send(conn, &Envelope::count(name, state.replica.len()));
        } else {
            self.platform.send_list(conn, name, &Members::new(&state.replica));
        }
    }

    /// The slot's connections that have not had the list yet get it now, and
    /// the topic's events from here on (the list is built once for all).
    fn list_pending(&self, name: &str, state: &TopicState, slot: &mut Slot) {
        if state.detached || slot.conns.iter().all(|c| c.listed) {
            return;
        }
        for pending in slot.conns.iter_mut().filter(|c| !c.listed) {
            pending.listed = true;
            self.platform.subscribe(pending.conn, &presence_topic(name));
            self.send_list(pending.conn, name, state);
        }
    }

    /// Join `conn` to `name`; `public` is the user's public data when the
    /// caller ran its own `select` (JSON text), else `select` runs here.
    pub(super) async fn join(&self, conn: ConnId, name: &str, public: Option<String>) -> Result<(), Error> {
        self.check(name)?;
        if name.starts_with("__") || lock(&self.conns).get(&conn).is_some_and(|c| c.joined.contains_key(name)) {
            return Ok(());
        }
        self.check_topic_caps(conn, name)?;
        let user_data = self.platform.user_data(conn).ok_or(Error::UnknownConnection(conn))?;
        let key = self.user_key(conn, &user_data);
        if key.len() > self.options.max_key_bytes {
            return Err(Error::KeyTooLong { size: key.len(), limit: self.options.max_key_bytes });
        }
        let data = match public {
            Some(json) => self.checked_public_data(json)?,
            None => self.public_data(user_data).await?,
        };
        // A second pass only follows a join refused because the topic was cleared.
        for _ in 0..2 {
            let topic = self.topic(name);
            let Some(user) = topic.slot(&key) else { continue };
            let mut slot = user.lock().await;
            if slot.has(conn) {
                return Ok(());
            }
            // From here the connection is wanted, whatever the store answers.
            {
                let mut state = topic.lock();
                if state.detached {
                    continue;
                }
                state.connections += 1;
                slot.conns.push(SlotConn { conn, data: data.clone(), listed: false });
                lock(&self.conns).entry(conn).or_default().joined.insert(name.to_owned(), key.clone());
            }
            let result = match self.ready(&topic).await {
                Ok(()) => self.reconcile(&topic, &key, &mut slot).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(Settled::Done) => {
                    // Another tab of a user already shown asserts nothing, so
                    // `record` did not list this connection: list it here.
                    self.list_pending(name, &topic.lock(), &mut slot);
                    return Ok(());
                }
                Ok(Settled::Cleared) => {
                    drop(slot);
                    drop(user);
                    self.clear_local(name);
                }
                Err(e) if e.outcome_unknown() => return Err(Error::Deferred(e)),
                refused => {
                    // Nothing of a refused join stays behind.
                    if slot.remove(conn) {
                        topic.lock().connections -= 1;
                    }
                    self.forget_join(conn, name);
                    drop(slot);
                    drop(user);
                    topic.forget_slot(&key);
                    drop(topic);
                    self.forget_topic_if_idle(name);
                    return Err(match refused {
                        Ok(Settled::Full { members }) => {
                            Error::TopicFull { members, limit: self.options.max_members_per_topic }
                        }
                        Err(e) => e.into(),
                        Ok(_) => unreachable!("handled above"),
                    });
                }
            }
        }
        Err(Error::ClearedWhileJoining { topic: name.to_owned() })
    }

    pub(super) async fn leave_all(&self, conn: ConnId) -> Result<(), Error> {
        let Some((joined, observing)) = lock(&self.conns)
            .get(&conn)
            .map(|c| (c.joined.keys().cloned().collect::<Vec<_>>(), c.observing.iter().cloned().collect::<Vec<_>>()))
        else {
            return Ok(());
        };
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

    /// The connection leaves one topic. It is always removed locally; if the
    /// store cannot be told now, the heartbeat finishes the release.
    pub(super) async fn leave_topic(&self, conn: ConnId, name: &str) -> Result<(), Error> {
        let Some(key) = lock(&self.conns).get(&conn).and_then(|c| c.joined.get(name).cloned()) else {
            return Ok(());
        };
        let topic = lock(&self.topics).get(name).cloned();
        let user = topic.as_ref().and_then(|t| t.existing_slot(&key));
        let (Some(topic), Some(user)) = (topic, user) else {
            self.forget_join(conn, name);
            return Ok(());
        };
        let mut slot = user.lock().await;
        if !slot.remove(conn) {
            return Ok(());
        }
        {
            let mut state = topic.lock();
            state.connections -= 1;
            if !state.observers.contains(&conn) {
                self.platform.unsubscribe(conn, &presence_topic(name));
            }
            self.forget_join(conn, name);
        }
        // Releases the hold, or restores the newest remaining tab's data.
        let result = self.reconcile(&topic, &key, &mut slot).await;
        // The slot goes with its last connection (and the topic with its
        // last slot) only once nothing holds it: guard and handle both.
        drop(slot);
        drop(user);
        if matches!(result, Ok(Settled::Cleared)) {
            self.clear_local(name);
            return Ok(());
        }
        topic.forget_slot(&key);
        drop(topic);
        self.forget_topic_if_idle(name);
        result.map(|_| ()).map_err(Error::from)
    }

    /// Take the slot's connections that were never listed out of the topic
    /// (their kept join was refused) and tell the platform.
    pub(super) fn refuse_unlisted(&self, topic: &Topic, slot: &mut Slot, error: &Error) {
        let (unlisted, listed): (Vec<SlotConn>, Vec<SlotConn>) =
            std::mem::take(&mut slot.conns).into_iter().partition(|c| !c.listed);
        slot.conns = listed;
        for refused in unlisted {
            topic.lock().connections -= 1;
            self.forget_join(refused.conn, &topic.name);
            self.platform.refused(refused.conn, &topic.name, error);
        }
    }

    pub(super) fn forget_join(&self, conn: ConnId, topic: &str) {
        let mut conns = lock(&self.conns);
        if let Some(entry) = conns.get_mut(&conn) {
            entry.joined.remove(topic);
            if entry.is_empty() {
                conns.remove(&conn);
            }
        }
    }

    /// The connection observes the topic: it gets the list, then the
    /// topic's events. If the backend cannot be reached to seed the topic,
    /// the observer is kept ([`Error::Deferred`]) and listed once it can.
    pub(super) async fn sync(&self, conn: ConnId, name: &str) -> Result<(), Error> {
        self.check(name)?;
        if name.starts_with("__") {
            return Ok(());
        }
        self.check_topic_caps(conn, name)?;
        for _ in 0..2 {
            let topic = self.topic(name);
            {
                let mut state = topic.lock();
                if state.detached {
                    continue;
                }
                state.observers.insert(conn);
                lock(&self.conns).entry(conn).or_default().observing.insert(name.to_owned());
                if topic.ready.initialized() {
                    self.platform.subscribe(conn, &presence_topic(name));
                    self.send_list(conn, name, &state);
                    return Ok(());
                }
                // Listed by whoever seeds the topic: this call, another one,
                // or the heartbeat once the backend answers.
                state.unlisted_observers.insert(conn);
            }
            return match self.ready(&topic).await {
                Ok(()) => Ok(()),
                Err(e) if e.outcome_unknown() => Err(Error::Deferred(e)),
                Err(e) => {
                    drop(topic);
                    self.unobserve(conn, name);
                    Err(e.into())
                }
            };
        }
        Ok(())
    }

    pub(super) fn resend_list(&self, conn: ConnId, name: &str) {
        let interested =
            lock(&self.conns).get(&conn).is_some_and(|c| c.joined.contains_key(name) || c.observing.contains(name));
        let topic = lock(&self.topics).get(name).cloned();
        if let Some(topic) = topic.filter(|t| interested && t.ready.initialized()) {
            let state = topic.lock();
            if !state.detached {
                self.send_list(conn, name, &state);
            }
        }
    }

    pub(super) fn unobserve(&self, conn: ConnId, name: &str) {
        if let Some(topic) = lock(&self.topics).get(name).cloned() {
            let mut state = topic.lock();
            state.observers.remove(&conn);
            state.unlisted_observers.remove(&conn);
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

    /// A topic nothing local uses any more lingers for a moment (watched,
    /// its replica kept) before it is forgotten; one that was never seeded
    /// is forgotten at once.
    pub(super) fn forget_topic_if_idle(&self, name: &str) {
        let mut topics = lock(&self.topics);
        let Some(topic) = topics.get(name) else { return };
        if Arc::strong_count(topic) != 1 || !topic.is_idle() {
            return;
        }
        let mut lingering = lock(&self.lingering);
        if lingering.contains(name) {
            return;
        }
        let gone = match topic.ready.initialized() {
            true => lingering.start(name),
            false => vec![name.to_owned()],
        };
        drop(lingering);
        for name in gone {
            self.forget_topic(&mut topics, &name);
        }
    }

    /// Forget the lingering topics whose moment is over.
    pub(super) fn forget_lingering(&self) {
        let mut topics = lock(&self.topics);
        let expired = lock(&self.lingering).expired();
        for name in expired {
            self.forget_topic(&mut topics, &name);
        }
    }

    /// Drop an idle topic and stop watching it; one that was used again in
    /// the meantime stays.
    fn forget_topic(&self, topics: &mut std::collections::HashMap<String, Arc<Topic>>, name: &str) {
        if topics.get(name).is_some_and(|t| Arc::strong_count(t) == 1 && t.is_idle()) {
            topics.remove(name);
            // Sent under the map lock: a later watch of the same topic is
            // queued after this unwatch.
            self.backend.unwatch(name);
        }
    }

    /// Drop everything local about a topic (it was cleared): connections and
    /// observers are unsubscribed from its presence events.
    pub(super) fn clear_local(&self, name: &str) {
        let topic = {
            let mut topics = lock(&self.topics);
            let Some(topic) = topics.remove(name) else {
                return;
            };
            lock(&self.lingering).stop(name);
            self.backend.unwatch(name);
            topic
        };
        let mut state = topic.lock();
        state.detached = true;
        state.slots.clear();
        let observers = std::mem::take(&mut state.observers);
        state.unlisted_observers.clear();
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
