//! The in-process backend: the same semantics as Redis (holds per instance with
//! expiry, sweeps, sequence numbers, epochs, events), inside one process.
//!
//! One [`MemoryStore`] plays the shared database; each engine gets its own
//! [`MemoryBackend`] (its own instance id) on it, so several engines in one
//! process behave exactly like several server instances on one Redis.

use super::{
    now_ms, Backend, BackendError, BackendEvent, Change, ChangeKind, HoldTerms, JoinOutcome, LeaveOutcome, Snapshot,
    TickOutcome, TickReport, TickTopic, TopicCounts,
};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The shared state every [`MemoryBackend`] on it sees. Cheap to clone.
///
/// Two backends on one store are two instances sharing presence, as two
/// processes on one Redis are:
///
/// ```
/// use presence::backend::memory::MemoryStore;
/// use presence::{Hub, Presence};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), presence::Error> {
/// let store = MemoryStore::new();
/// let (hub_a, hub_b) = (Hub::new(), Hub::new());
/// let a = Presence::builder(Arc::new(store.backend()), hub_a.clone()).build()?;
/// let b = Presence::builder(Arc::new(store.backend()), hub_b.clone()).build()?;
/// let (ada, _) = hub_a.connect(serde_json::json!({"id": "ada"}), 1 << 20);
/// a.join(ada, "lobby").await?;
/// assert_eq!(b.count("lobby").await?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    topics: HashMap<String, TopicData>,
    /// Last sequence number handed out, on any topic: one counter for the
    /// whole store, so a topic forgotten and used again never reuses one.
    seq: u64,
    /// instance id -> (watched topics, event sender)
    watchers: HashMap<String, Watcher>,
}

struct Watcher {
    topics: HashSet<String>,
    tx: mpsc::UnboundedSender<BackendEvent>,
}

#[derive(Default)]
struct TopicData {
    users: HashMap<String, String>,
    refs: HashMap<String, u32>,
    /// instance -> (expiry ms, held user keys)
    holds: HashMap<String, Hold>,
    epoch: Option<String>,
}

#[derive(Default)]
struct Hold {
    expires_at: u64,
    users: HashSet<String>,
    /// The instance's connections on the topic, as its heartbeat last said.
    connections: u64,
}

impl Shared {
    fn announce(&self, topic: &str, event: BackendEvent) {
        for watcher in self.watchers.values() {
            if watcher.topics.contains(topic) {
                let _ = watcher.tx.send(event.clone());
            }
        }
    }

    /// Expired holds lose their users; each user whose last holder that was
    /// leaves, announced once (attributed to the dead instance).
    fn sweep(&mut self, topic: &str, now: u64) {
        let Some(data) = self.topics.get_mut(topic) else {
            return;
        };
        let dead: Vec<String> =
            data.holds.iter().filter(|(_, hold)| hold.expires_at <= now).map(|(id, _)| id.clone()).collect();
        let mut changes = Vec::new();
        for instance in dead {
            let hold = data.holds.remove(&instance).unwrap_or_default();
            for user in hold.users {
                if release(data, &user) {
                    self.seq += 1;
                    let shown = data.users.remove(&user).unwrap_or_else(|| "null".into());
                    changes.push(Change {
                        topic: topic.to_owned(),
                        instance: instance.clone(),
                        seq: self.seq,
                        previous: None,
                        kind: ChangeKind::Leave,
                        key: user,
                        data: shown,
                    });
                }
            }
        }
        for change in changes {
            self.announce(topic, BackendEvent::Change(change));
        }
        self.forget_if_empty(topic);
    }

    /// Drop a topic nobody is in (and that was never cleared), so a long-lived
    /// process does not keep every topic it ever saw.
    fn forget_if_empty(&mut self, topic: &str) {
        let empty =
            self.topics.get(topic).is_some_and(|d| d.users.is_empty() && d.holds.is_empty() && d.epoch.is_none());
        if empty {
            self.topics.remove(topic);
        }
    }
}

/// Decrement a user's holder count; true when it reached zero.
fn release(data: &mut TopicData, user: &str) -> bool {
    match data.refs.get_mut(user) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        _ => {
            data.refs.remove(user);
            true
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend speaking for a new instance on this store.
    pub fn backend(&self) -> MemoryBackend {
        let instance = super::new_instance_id();
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.lock().unwrap().watchers.insert(instance.clone(), Watcher { topics: HashSet::new(), tx });
        MemoryBackend { store: self.clone(), instance, events: Mutex::new(Some(rx)) }
    }
}

/// One instance's view of a [`MemoryStore`].
pub struct MemoryBackend {
    store: MemoryStore,
    instance: String,
    events: Mutex<Option<mpsc::UnboundedReceiver<BackendEvent>>>,
}

impl MemoryBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.store.shared.lock().unwrap()
    }

    /// Take the next sequence number and announce this instance's change.
    fn announce(&self, shared: &mut Shared, topic: &str, kind: ChangeKind, key: &str, data: &str) -> u64 {
        shared.seq += 1;
        let seq = shared.seq;
        let change = Change {
            topic: topic.to_owned(),
            instance: self.instance.clone(),
            seq,
            previous: None,
            kind,
            key: key.to_owned(),
            data: data.to_owned(),
        };
        shared.announce(topic, BackendEvent::Change(change));
        seq
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn join(
        &self,
        topic: &str,
        key: &str,
        data: &str,
        epoch: Option<&str>,
        terms: HoldTerms,
    ) -> Result<JoinOutcome, BackendError> {
        let mut shared = self.lock();
        let entry = shared.topics.entry(topic.to_owned()).or_default();
        if let Some(current) = &entry.epoch {
            if Some(current.as_str()) != epoch {
                return Ok(JoinOutcome::StaleEpoch { epoch: current.clone() });
            }
        }
        let members = entry.users.len() as u64;
        if terms.max_members > 0 && members >= terms.max_members && !entry.users.contains_key(key) {
            return Ok(JoinOutcome::Full { members });
        }
        let hold = entry.holds.entry(self.instance.clone()).or_default();
        hold.expires_at = now_ms() + terms.ttl.as_millis() as u64;
        let first = hold.users.insert(key.to_owned()) && {
            let refs = entry.refs.entry(key.to_owned()).or_default();
            *refs += 1;
            *refs == 1
        };
        let kind = if first {
            ChangeKind::Join
        } else if entry.users.get(key).map(String::as_str) == Some(data) {
            return Ok(JoinOutcome::Unchanged);
        } else {
            ChangeKind::Updated
        };
        entry.users.insert(key.to_owned(), data.to_owned());
        let seq = self.announce(&mut shared, topic, kind, key, data);
        Ok(match kind {
            ChangeKind::Join => JoinOutcome::Joined { seq },
            _ => JoinOutcome::Updated { seq },
        })
    }

    async fn leave(&self, topic: &str, key: &str) -> Result<LeaveOutcome, BackendError> {
        let mut shared = self.lock();
        let Some(entry) = shared.topics.get_mut(topic) else {
            let seq = self.announce(&mut shared, topic, ChangeKind::Leave, key, "null");
            return Ok(LeaveOutcome::Left { seq, data: "null".into() });
        };
        let held = entry.holds.get_mut(&self.instance).is_some_and(|hold| hold.users.remove(key));
        if !held {
            if entry.users.contains_key(key) {
                return Ok(LeaveOutcome::NotHeld);
            }
            // Nobody shows the user: announce the leave anyway, as leave.lua
            // does, so a stale replica copy cannot outlive it.
            let seq = self.announce(&mut shared, topic, ChangeKind::Leave, key, "null");
            return Ok(LeaveOutcome::Left { seq, data: "null".into() });
        }
        // With its last user here gone, the instance's hold (and its
        // connections) go too, as leave.lua drops its `conns` entry.
        if entry.holds.get(&self.instance).is_some_and(|hold| hold.users.is_empty()) {
            entry.holds.remove(&self.instance);
        }
        if !release(entry, key) {
            return Ok(LeaveOutcome::StillHeld);
        }
        let data = entry.users.remove(key).unwrap_or_else(|| "null".into());
        let seq = self.announce(&mut shared, topic, ChangeKind::Leave, key, &data);
        shared.forget_if_empty(topic);
        Ok(LeaveOutcome::Left { seq, data })
    }

    async fn snapshot(&self, topic: &str, _seen: u64) -> Result<Snapshot, BackendError> {
        let mut shared = self.lock();
        shared.sweep(topic, now_ms());
        let seq = shared.seq;
        Ok(shared
            .topics
            .get(topic)
            .map(|data| Snapshot {
                seq,
                epoch: data.epoch.clone(),
                users: data.users.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            })
            .unwrap_or(Snapshot { seq, ..Snapshot::default() }))
    }

    async fn count(&self, topic: &str) -> Result<u64, BackendError> {
        let mut shared = self.lock();
        shared.sweep(topic, now_ms());
        Ok(shared.topics.get(topic).map_or(0, |data| data.users.len() as u64))
    }

    async fn stats(&self, topic: &str) -> Result<TopicCounts, BackendError> {
        let mut shared = self.lock();
        shared.sweep(topic, now_ms());
        let Some(data) = shared.topics.get(topic) else { return Ok(TopicCounts::default()) };
        Ok(TopicCounts {
            users: data.users.len() as u64,
            connections: data.holds.values().map(|hold| hold.connections).sum(),
            own_connections: data.holds.get(&self.instance).map_or(0, |hold| hold.connections),
        })
    }

    async fn tick(&self, topics: &[TickTopic], ttl: Duration) -> Result<Vec<TickReport>, BackendError> {
        let mut shared = self.lock();
        let now = now_ms();
        let mut reports = Vec::with_capacity(topics.len());
        for item in topics {
            let data = shared.topics.entry(item.topic.clone()).or_default();
            let outcome = match &data.epoch {
                Some(epoch) if Some(epoch) != item.epoch.as_ref() => TickOutcome::Cleared { epoch: epoch.clone() },
                _ if item.held == 0 => TickOutcome::Alive,
                _ => match data.holds.get_mut(&self.instance) {
                    Some(hold) => {
                        hold.expires_at = now + ttl.as_millis() as u64;
                        hold.connections = item.connections.unwrap_or(hold.connections);
                        if hold.users.len() < item.held {
                            TickOutcome::Lost
                        } else {
                            TickOutcome::Alive
                        }
                    }
                    None => TickOutcome::Lost,
                },
            };
            shared.sweep(&item.topic, now);
            // Events are delivered under the store's lock: a replica cannot drift.
            reports.push(TickReport { outcome, latest: None });
        }
        Ok(reports)
    }

    async fn clear(&self) -> Result<(), BackendError> {
        let mut shared = self.lock();
        let epoch = super::new_instance_id();
        // Every topic with state, and every topic someone watches (an empty
        // topic is forgotten, but its observers must still hear the clear).
        let mut topics: HashSet<String> = shared.topics.keys().cloned().collect();
        topics.extend(shared.watchers.values().flat_map(|w| w.topics.iter().cloned()));
        for topic in topics {
            let data = shared.topics.entry(topic.clone()).or_default();
            data.users.clear();
            data.refs.clear();
            data.holds.clear();
            data.epoch = Some(epoch.clone());
            let event =
                BackendEvent::Cleared { topic: topic.clone(), instance: self.instance.clone(), epoch: epoch.clone() };
            shared.announce(&topic, event);
        }
        Ok(())
    }

    async fn watch(&self, topic: &str) -> Result<(), BackendError> {
        if let Some(watcher) = self.lock().watchers.get_mut(&self.instance) {
            watcher.topics.insert(topic.to_owned());
        }
        Ok(())
    }

    fn unwatch(&self, topic: &str) {
        if let Some(watcher) = self.lock().watchers.get_mut(&self.instance) {
            watcher.topics.remove(topic);
        }
    }

    fn events(&self) -> Option<mpsc::UnboundedReceiver<BackendEvent>> {
        self.events.lock().unwrap().take()
    }

    fn shutdown(&self) {
        self.lock().watchers.remove(&self.instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic nobody is in is forgotten, and using it again keeps sequence
    /// numbers increasing (replicas elsewhere must not ignore new events).
    #[tokio::test]
    async fn empty_topics_are_forgotten_and_sequence_stays_monotonic() {
        let store = MemoryStore::new();
        let backend = store.backend();
        let ttl = Duration::from_secs(60);
        let JoinOutcome::Joined { seq: first } = backend.join("t", "a", "{}", None, HoldTerms::ttl(ttl)).await.unwrap()
        else {
            panic!("first join")
        };
        assert!(matches!(backend.leave("t", "a").await.unwrap(), LeaveOutcome::Left { .. }));
        assert_eq!(store.shared.lock().unwrap().topics.len(), 0);
        let JoinOutcome::Joined { seq: again } = backend.join("t", "a", "{}", None, HoldTerms::ttl(ttl)).await.unwrap()
        else {
            panic!("join again")
        };
        assert!(again > first + 1, "{again} after {first}: the leave took one in between");
        // An observer-only tick does not leave an empty topic behind either.
        let topic =
            TickTopic { topic: "watched".into(), held: 0, epoch: None, connections: None, verify: false, renew: false };
        backend.tick(&[topic], ttl).await.unwrap();
        assert_eq!(store.shared.lock().unwrap().topics.len(), 1);
    }
}
