//! What one instance keeps about one topic: its replica of the members, the
//! local connections of each user (a *slot*), the observers, and the epoch.
//!
//! Lock order, everywhere in the engine: a slot's async lock, then the topic
//! map, then a topic's `state`, then the connection map. No std lock is held
//! across an `.await`.

use super::replica::Replica;
use super::ConnId;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Mutex as AsyncMutex, OnceCell};

pub(crate) struct Topic {
    pub name: String,
    /// Set once events flow for this topic and a snapshot is installed.
    pub ready: OnceCell<()>,
    pub state: Mutex<TopicState>,
}

#[derive(Default)]
pub(crate) struct TopicState {
    pub replica: Replica,
    /// The topic's clear() epoch as last seen (None: never cleared).
    pub epoch: Option<String>,
    /// user key -> that user's local connections. The async lock serialises
    /// one user's joins and leaves, so only the first and last connection
    /// reach the backend, while different users proceed in parallel.
    pub slots: HashMap<String, Arc<AsyncMutex<Slot>>>,
    pub observers: HashSet<ConnId>,
    /// Removed from the engine by a clear: nothing may be registered here.
    pub detached: bool,
}

/// One user's local connections on one topic.
#[derive(Default)]
pub(crate) struct Slot {
    /// Oldest first, each with the public data it joined with; the newest
    /// connection's data is what the user shows.
    pub conns: Vec<(ConnId, String)>,
    /// What the backend holds for this instance.
    pub remote: Remote,
    /// The data this instance last stored for the user.
    pub shown: Option<String>,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Remote {
    #[default]
    Absent,
    Held,
    /// A call failed without telling whether it applied: the heartbeat
    /// re-asserts (connections left) or releases (none left) the hold.
    Unknown,
}

impl Slot {
    /// The data the user should show: its newest connection's.
    pub fn wanted(&self) -> Option<&str> {
        self.conns.last().map(|(_, data)| data.as_str())
    }

    pub fn is_unused(&self) -> bool {
        self.conns.is_empty() && self.remote == Remote::Absent
    }
}

impl Topic {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), ready: OnceCell::new(), state: Mutex::default() }
    }

    pub fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The user's slot, created if needed; `None` if the topic was cleared.
    pub fn slot(&self, key: &str) -> Option<Arc<AsyncMutex<Slot>>> {
        let mut state = self.lock();
        if state.detached {
            return None;
        }
        Some(state.slots.entry(key.to_owned()).or_default().clone())
    }

    pub fn existing_slot(&self, key: &str) -> Option<Arc<AsyncMutex<Slot>>> {
        self.lock().slots.get(key).cloned()
    }

    /// Drop the user's slot if nobody uses or waits on it.
    pub fn forget_slot(&self, key: &str) {
        let mut state = self.lock();
        if let Some(slot) = state.slots.get(key) {
            let idle = Arc::strong_count(slot) == 1 && slot.try_lock().is_ok_and(|s| s.is_unused());
            if idle {
                state.slots.remove(key);
            }
        }
    }

    /// Nothing local needs this topic any more.
    pub fn is_idle(&self) -> bool {
        let state = self.lock();
        state.observers.is_empty() && state.slots.is_empty()
    }

    pub fn epoch(&self) -> Option<String> {
        self.lock().epoch.clone()
    }

    pub fn slots(&self) -> Vec<(String, Arc<AsyncMutex<Slot>>)> {
        self.lock().slots.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
    }
}

/// What one connection takes part in, for `leave(conn)` and `clear()`.
#[derive(Default, Debug)]
pub(crate) struct ConnTopics {
    /// topic -> the user key the connection joined as
    pub joined: HashMap<String, String>,
    pub observing: HashSet<String>,
}

impl ConnTopics {
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.observing.is_empty()
    }
}
