//! The heartbeat: every `heartbeat` interval, refresh this instance's holds
//! and sweep expired ones (one pipelined batch, one call per topic), finish
//! releases that failed, re-assert users whose holds were lost, leave
//! connections the platform reports closed, and send each topic's
//! `heartbeat` envelope (its live keys) to local subscribers.

use super::topic::Remote;
use super::{lock, Envelope, Inner};
use crate::backend::{JoinOutcome, TickOutcome, TickTopic};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub(super) async fn run(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(inner) => inner.options.heartbeat,
        None => return,
    };
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.tick().await;
    }
}

impl Inner {
    pub(super) async fn tick(&self) {
        if self.check_alive().is_err() {
            return;
        }
        // Connections the platform lost without telling us.
        let closed: Vec<_> = lock(&self.conns).keys().copied().filter(|c| !self.platform.is_open(*c)).collect();
        for conn in closed {
            let _ = self.leave_all(conn).await;
        }

        let topics: Vec<_> = lock(&self.topics).values().filter(|t| t.ready.initialized()).cloned().collect();
        for topic in &topics {
            self.settle(topic).await;
        }

        let items: Vec<TickTopic> = topics
            .iter()
            .map(|t| {
                let state = t.lock();
                TickTopic { topic: t.name.clone(), holds: !state.slots.is_empty(), epoch: state.epoch.clone() }
            })
            .collect();
        match self.backend.tick(&items, self.options.ttl).await {
            Ok(outcomes) => {
                for (topic, outcome) in topics.iter().zip(outcomes) {
                    match outcome {
                        TickOutcome::Alive => {}
                        TickOutcome::Lost => {
                            tracing::info!(topic = %topic.name, "heartbeat: hold lost; re-asserting users");
                            for (_, slot) in topic.slots() {
                                slot.lock().await.remote = Remote::Unknown;
                            }
                            self.settle(topic).await;
                        }
                        TickOutcome::Cleared { .. } => self.clear_local(&topic.name),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat: cannot refresh holds"),
        }

        let tombstone_age = (self.options.heartbeat * 2).max(Duration::from_secs(5));
        for topic in &topics {
            let mut state = topic.lock();
            state.replica.prune(tombstone_age);
            if !state.detached && !state.replica.is_empty() {
                let keys = state.replica.members().map(|(key, _)| key);
                self.platform.publish(&super::presence_topic(&topic.name), &Envelope::heartbeat(&topic.name, keys));
            }
        }
        drop(topics);
        let names: Vec<String> = lock(&self.topics).keys().cloned().collect();
        for name in names {
            self.forget_topic_if_idle(&name);
        }
    }

    /// Bring every slot of the topic whose backend state is uncertain back in
    /// line: re-assert users that still have connections, release the rest.
    async fn settle(&self, topic: &Arc<super::Topic>) {
        for (key, slot) in topic.slots() {
            let mut slot = slot.lock().await;
            if slot.remote != Remote::Unknown {
                continue;
            }
            match slot.wanted().map(str::to_owned) {
                Some(data) => {
                    let epoch = topic.epoch();
                    match self.backend.join(&topic.name, &key, &data, epoch.as_deref(), self.options.ttl).await {
                        Ok(JoinOutcome::StaleEpoch { .. }) => {
                            drop(slot);
                            self.clear_local(&topic.name);
                            return;
                        }
                        Ok(outcome) => {
                            slot.remote = Remote::Held;
                            slot.shown = Some(data.clone());
                            self.show_join(topic, &key, &data, &outcome);
                        }
                        Err(e) => {
                            tracing::warn!(topic = %topic.name, error = %e, "heartbeat: re-assert failed")
                        }
                    }
                }
                None => match self.backend.leave(&topic.name, &key).await {
                    Ok(outcome) => {
                        slot.remote = Remote::Absent;
                        slot.shown = None;
                        if let crate::backend::LeaveOutcome::Left { seq, data } = outcome {
                            let mut state = topic.lock();
                            if !state.detached {
                                self.show(&topic.name, &mut state, seq, crate::backend::ChangeKind::Leave, &key, &data);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, error = %e, "heartbeat: release failed")
                    }
                },
            }
            drop(slot);
            topic.forget_slot(&key);
        }
    }
}
