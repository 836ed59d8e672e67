//! The event pump and replica repair. The pump applies what every instance
//! did (as the backend reports it) to the local replicas and shows it to local
//! subscribers. A change this instance made was usually applied already, when
//! its script replied, and its echo then changes nothing (the replica keeps
//! only what is newer by sequence number); but a call whose reply was lost (a
//! timeout on a stalled Redis that then ran it) is known only by its echo, so
//! echoes are never skipped. After the backend's event stream was
//! interrupted, every watched topic is read again and the difference shown —
//! once per interruption, however many reports of it arrive meanwhile; after
//! one topic's events were (a cluster shard that moved), that topic only, by
//! the same resyncer.

use super::topic::Topic;
use super::{lock, Inner};
use crate::backend::BackendEvent;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, Mutex as AsyncMutex, Notify};

/// How many interruptions were reported, and how many a finished resync
/// covers; and the single topics waiting to be read again.
#[derive(Default)]
pub(super) struct ResyncCounts {
    reported: AtomicU64,
    covered: AtomicU64,
    topics: std::sync::Mutex<HashSet<String>>,
}

impl ResyncCounts {
    pub fn pending(&self) -> bool {
        self.covered.load(Ordering::Acquire) < self.reported.load(Ordering::Acquire)
    }
}

/// The backend's event stream, shared so a restarted pump picks it up.
pub(super) type Events = Arc<AsyncMutex<mpsc::UnboundedReceiver<BackendEvent>>>;

pub(super) async fn pump(inner: Weak<Inner>, events: Events) {
    let mut events = events.lock().await;
    while let Some(event) = events.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        match event {
            BackendEvent::Change(change) => {
                let topic = lock(&inner.topics).get(&change.topic).cloned();
                if let Some(topic) = topic {
                    let mut state = topic.lock();
                    if !state.detached {
                        if !state.heard.event(change.seq, change.previous) {
                            // An event before this one never came: read the
                            // topic again (what this one shows is kept).
                            tracing::info!(topic = %change.topic, "events lost; re-reading the topic");
                            lock(&inner.resyncs.topics).insert(change.topic.clone());
                            inner.resync_wanted.notify_one();
                        }
                        inner.show(&change.topic, &mut state, change.seq, change.kind, &change.key, &change.data);
                    }
                }
            }
            BackendEvent::Cleared { topic, instance, .. } if instance != inner.backend.instance() => {
                inner.clear_local(&topic);
            }
            // Coalesced too: a topic named twice before the resyncer runs is
            // read once, and a full resync wanted meanwhile covers it.
            BackendEvent::TopicResynced { topic } => {
                lock(&inner.resyncs.topics).insert(topic);
                inner.resync_wanted.notify_one()
            }
            // Coalesced: a resync already wanted absorbs this one.
            BackendEvent::Resynced => {
                inner.resyncs.reported.fetch_add(1, Ordering::AcqRel);
                inner.resync_wanted.notify_one()
            }
            _ => {}
        }
    }
}

/// Re-read what the pump asks for: every watched topic after the event
/// stream was interrupted, else the single topics named since the last run.
pub(super) async fn resyncer(inner: Weak<Inner>, wanted: Arc<Notify>) {
    loop {
        wanted.notified().await;
        let Some(inner) = inner.upgrade() else { return };
        let covers = inner.resyncs.reported.load(Ordering::Acquire);
        let everything = inner.resyncs.pending();
        let named = std::mem::take(&mut *lock(&inner.resyncs.topics));
        let topics: Vec<_> = lock(&inner.topics)
            .iter()
            .filter(|(name, topic)| topic.ready.initialized() && (everything || named.contains(*name)))
            .map(|(_, topic)| topic.clone())
            .collect();
        for topic in topics {
            inner.resync_topic(&topic).await;
        }
        inner.resyncs.covered.fetch_max(covers, Ordering::AcqRel);
        inner.stats.resyncs.fetch_add(1, Ordering::Relaxed);
    }
}

impl Inner {
    /// Read one topic again and show what changed while events were lost.
    /// Whatever lost the events (a reconnect, a failover) may have lost
    /// writes too: the next tick verifies the topic's holds.
    pub(super) async fn resync_topic(&self, topic: &Arc<Topic>) {
        let seen = {
            let mut state = topic.lock();
            state.verify_due = true;
            state.replica.high()
        };
        let snapshot = match self.backend.snapshot(&topic.name, seen).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::warn!(topic = %topic.name, error = %e, "resync: cannot re-read topic");
                return;
            }
        };
        let cleared = {
            let mut state = topic.lock();
            if state.detached {
                return;
            }
            if snapshot.epoch.is_some() && snapshot.epoch != state.epoch {
                true
            } else {
                state.heard.read(snapshot.seq);
                for (kind, key, data) in state.replica.install(&snapshot) {
                    self.announce(&topic.name, &mut state, kind, &key, &data);
                }
                false
            }
        };
        if cleared {
            self.clear_local(&topic.name);
        }
    }
}
