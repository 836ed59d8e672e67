//! What one instance keeps about one topic: its replica of the members, the
//! local connections of each user (a *slot*), the observers, and the epoch.
//!
//! Lock order, everywhere in the engine: a slot's async lock, then the topic
//! map, then a topic's `state`, then the connection map; the set of
//! lingering topics is taken after the topic map, never with a topic's
//! `state` held. No std lock is held across an `.await`.

use super::counting::Counting;
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
    /// Observers not sent the list yet: their `sync` met a backend that could
    /// not seed the topic, and they are listed once it is seeded.
    pub unlisted_observers: HashSet<ConnId>,
    /// Removed from the engine by a clear: nothing may be registered here.
    pub detached: bool,
    /// Whether subscribers get counts instead of members.
    pub counting: Counting,
    /// Local connections joined to the topic (over every slot).
    pub connections: usize,
    /// What the last heartbeat told the store of them (`None`: nothing yet,
    /// or the store may have lost it).
    pub reported_connections: Option<u64>,
    /// The store's newest sequence number when the last tick found the
    /// replica behind it; behind the same number twice means events were lost.
    pub behind_at: Option<u64>,
    /// The next tick verifies the topic whatever its schedule (see `upkeep`).
    pub verify_due: bool,
    /// What the backend's event stream brought of the topic.
    pub heard: Heard,
}

/// What an instance heard of one topic's events through the backend's event
/// stream (its own included), apart from what its own calls' replies said:
/// a silent stream (a subscription lost) or a gap in it (an event lost)
/// shows here even when the replica looks right.
#[derive(Default, Debug)]
pub(crate) struct Heard {
    /// The last event's sequence number since the topic was last read.
    last: Option<u64>,
    /// The newest sequence number heard, or read by a snapshot.
    pub high: u64,
}

impl Heard {
    /// An event arrived; false when the one before it (`previous`, as the
    /// store numbered it) is not the last one heard: events were lost. A
    /// store that lost its data numbers afresh (`previous` 0): the chain
    /// starts again, and the heartbeat's recovery, which re-asserts every
    /// holder, owns that case (a read in the middle of it would show users
    /// leaving and joining again).
    pub fn event(&mut self, seq: u64, previous: Option<u64>) -> bool {
        let chained = match (self.last, previous) {
            (_, Some(0)) => true,
            (Some(last), Some(previous)) => previous == last || seq <= last,
            _ => true,
        };
        self.last = Some(self.last.map_or(seq, |last| last.max(seq)));
        self.high = self.high.max(seq);
        chained
    }

    /// The topic was read (a snapshot at `seq`): the chain starts again.
    pub fn read(&mut self, seq: u64) {
        self.last = None;
        self.high = self.high.max(seq);
    }
}

/// One local connection of a user.
pub(crate) struct SlotConn {
    pub conn: ConnId,
    /// The public data it joined with.
    pub data: String,
    /// It has received the topic's `list` (and its events since). A join the
    /// store could not take yet is listed once the heartbeat asserts it.
    pub listed: bool,
}

/// One user's local connections on one topic.
#[derive(Default)]
pub(crate) struct Slot {
    /// Oldest first; the newest connection's data is what the user shows.
    pub conns: Vec<SlotConn>,
    /// What the backend holds for this instance.
    pub remote: Remote,
    /// The data this instance last stored for the user.
    pub shown: Option<String>,
}

/// What the store must be told so it matches a slot's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Needed {
    /// Take (or re-take, or update) the hold with this data.
    Assert(String),
    Release,
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
        self.conns.last().map(|c| c.data.as_str())
    }

    /// The one decision behind every transition: connections left and the
    /// store does not show exactly their data → assert; none left and the
    /// store may still hold the user → release; otherwise nothing.
    pub fn needed(&self) -> Option<Needed> {
        match self.wanted() {
            Some(data) if self.remote != Remote::Held || self.shown.as_deref() != Some(data) => {
                Some(Needed::Assert(data.to_owned()))
            }
            None if self.remote != Remote::Absent => Some(Needed::Release),
            _ => None,
        }
    }

    pub fn has(&self, conn: ConnId) -> bool {
        self.conns.iter().any(|c| c.conn == conn)
    }

    /// Take a connection out; false if it was not here.
    pub fn remove(&mut self, conn: ConnId) -> bool {
        let before = self.conns.len();
        self.conns.retain(|c| c.conn != conn);
        self.conns.len() != before
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

    /// How many users this instance believes the store holds for it here.
    /// A slot busy with a call is not counted (an undercount never reports a
    /// false loss; the next tick counts it).
    pub fn believed_held(&self) -> usize {
        self.lock().slots.values().filter(|s| s.try_lock().is_ok_and(|s| s.remote == Remote::Held)).count()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(conns: &[&str], remote: Remote, shown: Option<&str>) -> Slot {
        Slot {
            conns: conns
                .iter()
                .enumerate()
                .map(|(i, data)| SlotConn { conn: ConnId::new(i as u64), data: (*data).to_owned(), listed: true })
                .collect(),
            remote,
            shown: shown.map(str::to_owned),
        }
    }

    /// The one decision behind every transition, case by case: the newest
    /// connection's data is asserted unless the store shows exactly it; with
    /// no connection left, a hold that may exist is released.
    #[test]
    fn what_the_store_must_be_told() {
        let assert = |data: &str| Some(Needed::Assert(data.to_owned()));
        let cases: [(Slot, Option<Needed>); 9] = [
            (slot(&[], Remote::Absent, None), None),
            (slot(&[], Remote::Held, Some("a")), Some(Needed::Release)),
            (slot(&[], Remote::Unknown, None), Some(Needed::Release)),
            (slot(&["a"], Remote::Absent, None), assert("a")),
            (slot(&["a"], Remote::Held, Some("a")), None),
            (slot(&["a"], Remote::Held, Some("b")), assert("a")),
            (slot(&["a"], Remote::Unknown, Some("a")), assert("a")),
            (slot(&["a", "b"], Remote::Held, Some("a")), assert("b")),
            (slot(&["a", "b"], Remote::Held, Some("b")), None),
        ];
        for (i, (slot, needed)) in cases.into_iter().enumerate() {
            assert_eq!(slot.needed(), needed, "case {i}");
        }
    }

    /// A gap in the numbers an event stream brings is a lost event; the
    /// chain starts again after each read of the topic.
    #[test]
    fn a_lost_event_shows_as_a_gap() {
        let mut heard = Heard::default();
        assert!(heard.event(10, Some(5)), "the first event after a read starts the chain");
        assert!(heard.event(11, Some(10)));
        assert!(!heard.event(13, Some(12)), "12 never came");
        assert!(heard.event(14, Some(13)));
        assert!(heard.event(15, None), "a store that cannot lose events gives no previous number");
        assert!(heard.event(90, Some(0)), "a store that lost its data numbers afresh: not a gap");
        assert!(heard.event(91, Some(90)));
        heard.read(100);
        assert!(heard.event(102, Some(101)), "chain restarted by the read");
        assert_eq!(heard.high, 102);
    }
}
