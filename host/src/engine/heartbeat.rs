//! The heartbeat, every `heartbeat` interval, in this order:
//!
//! 1. refresh this instance's holds and sweep expired ones (one pipelined
//!    batch), verifying and renewing the topics `upkeep` says are due (and
//!    verifying those a resync asked for). It runs on its own: the rest of
//!    the tick runs in the background and the next refresh never waits for it, so a
//!    slow store or a long settle cannot delay a refresh past `ttl` and get
//!    live users swept;
//! 2. leave connections the platform reports closed;
//! 3. settle: for each topic, one pipelined batch asserts every user whose
//!    join is still wanted (deferred, lost with the store's data, uncertain)
//!    and releases every user whose release is still owed;
//! 4. repair replicas that drifted from the store (events or data lost);
//! 5. send each topic's `heartbeat` envelope (its live keys).

use super::membership::Settled;
use super::topic::{Needed, Remote, Topic};
use super::{lock, Envelope, Inner};
use crate::backend::{BackendError, HoldOutcome, Latest, TickOutcome, TickReport, TickTopic};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub(super) async fn run(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(inner) => inner.options.heartbeat,
        None => return,
    };
    let settling = Arc::new(AtomicBool::new(false));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Some(ended) = inner.upgrade().map(|inner| inner.outage.ended_handle()) else { return };
    loop {
        // Every period, and at once when a backend outage ends: what was
        // kept meanwhile is settled without waiting for the period.
        tokio::select! {
            _ = interval.tick() => {}
            _ = ended.notified() => interval.reset(),
        }
        let Some(inner) = inner.upgrade() else { return };
        let refreshed = inner.refresh().await;
        // One settle at a time; a tick that finds one running skips its own.
        if !settling.swap(true, Ordering::AcqRel) {
            let done = ResetOnDrop(settling.clone());
            tokio::spawn(async move {
                inner.settle_after(refreshed).await;
                drop(done);
            });
        }
    }
}

/// Clears the "a settle is running" flag however the settle ends.
struct ResetOnDrop(Arc<AtomicBool>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a refresh found, for the settle that follows it.
pub(super) struct Refreshed {
    /// Every topic with local interest.
    topics: Vec<Arc<Topic>>,
    /// The watched ones (the refresh covered these), each with its report
    /// (none if the refresh failed) and the newest sequence number its
    /// replica had seen before the refresh.
    ready: Vec<(Arc<Topic>, Option<TickReport>, u64)>,
}

impl Inner {
    /// A whole heartbeat, awaited: refresh, then settle.
    pub(super) async fn tick(&self) {
        let refreshed = self.refresh().await;
        self.settle_after(refreshed).await;
    }

    /// Step 1: refresh holds and sweep, one pipelined batch (timed).
    pub(super) async fn refresh(&self) -> Refreshed {
        let started = std::time::Instant::now();
        let refreshed = self.refresh_holds().await;
        self.last_refresh_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        refreshed
    }

    async fn refresh_holds(&self) -> Refreshed {
        let topics: Vec<Arc<Topic>> =
            if self.check_alive().is_ok() { lock(&self.topics).values().cloned().collect() } else { Vec::new() };
        let ready: Vec<&Arc<Topic>> = topics.iter().filter(|t| t.ready.initialized()).collect();
        let mut seen_before = Vec::with_capacity(ready.len());
        let tick = self.ticks.fetch_add(1, Ordering::Relaxed);
        let items: Vec<TickTopic> = ready
            .iter()
            .map(|t| {
                let held = t.believed_held();
                let mut state = t.lock();
                seen_before.push(state.replica.high());
                // Sent only when it changed; taken as stored unless the tick
                // says otherwise (below).
                let connections = state.connections as u64;
                let changed = state.reported_connections.replace(connections) != Some(connections);
                let duties = self.upkeep.duties(tick, &t.name);
                TickTopic {
                    topic: t.name.clone(),
                    held,
                    epoch: state.epoch.clone(),
                    connections: changed.then_some(connections),
                    verify: duties.verify || std::mem::take(&mut state.verify_due),
                    renew: duties.renew,
                }
            })
            .collect();
        let mut reports = match items.is_empty() {
            true => Vec::new(),
            false => {
                let ticked = self.backend.tick(&items, self.options.ttl).await;
                self.outage.observe(&ticked);
                ticked.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "heartbeat: cannot refresh holds");
                    Vec::new()
                })
            }
        }
        .into_iter();
        let ready: Vec<_> =
            ready.into_iter().zip(seen_before).map(|(t, seen)| (t.clone(), reports.next(), seen)).collect();
        // After a loss, a clear or a failed tick, the store may not have the
        // count: the next tick sends it again. A verify a failed tick owed
        // waits for the next one too.
        for (topic, report, _) in &ready {
            if !matches!(report.as_ref().map(|r| &r.outcome), Some(TickOutcome::Alive)) {
                let mut state = topic.lock();
                state.reported_connections = None;
                state.verify_due |= report.is_none();
            }
        }
        Refreshed { topics, ready }
    }

    /// Steps 2–5.
    pub(super) async fn settle_after(&self, refreshed: Refreshed) {
        if self.check_alive().is_err() {
            return;
        }
        let Refreshed { topics, ready } = refreshed;
        // 2. Connections the platform lost without telling us.
        let closed: Vec<_> = lock(&self.conns).keys().copied().filter(|c| !self.platform.is_open(*c)).collect();
        for conn in closed {
            let _ = self.leave_all(conn).await;
        }

        // 3. Settle, and 4. repair drifted replicas.
        for (topic, report, seen_before) in &ready {
            match report.as_ref().map(|r| &r.outcome) {
                Some(TickOutcome::Cleared { .. }) => {
                    self.clear_local(&topic.name);
                    continue;
                }
                Some(TickOutcome::Lost) => {
                    tracing::info!(topic = %topic.name, "heartbeat: holds lost; re-asserting users");
                    for (_, slot) in topic.slots() {
                        let mut slot = slot.lock().await;
                        if slot.remote == Remote::Held {
                            slot.remote = Remote::Unknown;
                        }
                    }
                }
                Some(TickOutcome::Failed { reason }) => {
                    tracing::warn!(topic = %topic.name, reason, "heartbeat: cannot refresh this topic's hold");
                }
                Some(TickOutcome::Alive) | None => {}
            }
            if self.settle(topic).await == Settled::Cleared {
                self.clear_local(&topic.name);
                continue;
            }
            if let Some(latest) = report.as_ref().and_then(|r| r.latest) {
                if self.drifted(topic, latest, *seen_before) {
                    self.stats.repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // The stream may be what broke: subscribe the topic
                    // again (a no-op for a subscription that still works).
                    if let Err(e) = self.backend.watch(&topic.name).await {
                        tracing::warn!(topic = %topic.name, error = %e, "repair: cannot subscribe the topic again");
                    }
                    self.resync_topic(topic).await;
                }
            }
        }
        // Topics whose first join or sync could not reach the store.
        for topic in topics.iter().filter(|t| !t.ready.initialized() && !t.is_idle()) {
            if self.ready(topic).await.is_ok() && self.settle(topic).await == Settled::Cleared {
                self.clear_local(&topic.name);
            }
        }

        // 5. Heartbeat envelopes.
        let tombstone_age = (self.options.heartbeat * 2).max(Duration::from_secs(5));
        for (topic, _, _) in &ready {
            let mut state = topic.lock();
            state.replica.prune(tombstone_age);
            if !state.detached && !state.replica.is_empty() && !state.counting.active() {
                let keys = state.replica.members().map(|(key, _)| key);
                self.platform.publish(&super::presence_topic(&topic.name), &Envelope::heartbeat(&topic.name, keys));
            }
        }
        drop(ready);
        drop(topics);
        let names: Vec<String> = lock(&self.topics).keys().cloned().collect();
        for name in names {
            self.forget_topic_if_idle(&name);
        }
        self.forget_lingering();
    }

    /// Apply every hold change the topic's slots still need, in one batch.
    /// Slots busy with a call of their own are left to it.
    async fn settle(&self, topic: &Topic) -> Settled {
        let mut owed = Vec::new();
        for (key, slot) in topic.slots() {
            if let Ok(guard) = slot.try_lock_owned() {
                if let Some(needed) = guard.needed() {
                    owed.push((key, guard, needed));
                }
            }
        }
        if owed.is_empty() || !self.outage.may_call() {
            return Settled::Done;
        }
        let changes: Vec<_> = owed.iter().map(|(key, _, needed)| needed.as_change(key)).collect();
        let epoch = topic.epoch();
        let outcomes = self.backend.apply(&topic.name, epoch.as_deref(), self.terms(), &changes).await;
        self.outage.observe(&outcomes);
        let changes_len = changes.len();
        drop(changes);
        let mut settled = Settled::Done;
        let mut failure = None;
        for (i, (key, mut slot, needed)) in owed.into_iter().enumerate() {
            let outcome: Result<HoldOutcome, _> = match &outcomes {
                Ok(outcomes) => outcomes.get(i).cloned().ok_or_else(|| {
                    BackendError::protocol("apply", format!("{} outcomes for {} changes", outcomes.len(), changes_len))
                }),
                Err(e) => Err(e.clone()),
            };
            let releasing = needed == Needed::Release;
            match self.record(topic, &key, &mut slot, needed, outcome) {
                Ok(Settled::Cleared) => settled = Settled::Cleared,
                Ok(Settled::Done) => {}
                Ok(Settled::Full { members }) => {
                    // Others filled the topic while this join was kept. Its
                    // connections that were never listed are refused (their
                    // clients retry and hear why); a hold lost with the
                    // store's data, whose users were listed, is asserted
                    // again next tick.
                    let error = super::Error::TopicFull { members, limit: self.options.max_members_per_topic };
                    self.refuse_unlisted(topic, &mut slot, &error);
                    tracing::warn!(topic = %topic.name, members, "heartbeat: topic full; cannot make a kept join");
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
            let idle = slot.is_unused();
            drop(slot);
            if releasing || idle {
                topic.forget_slot(&key);
            }
        }
        if let Some(e) = failure {
            tracing::warn!(topic = %topic.name, error = %e, "heartbeat: cannot settle holds; retrying next tick");
        }
        settled
    }

    /// Whether the replica no longer matches the store: the store is behind
    /// what this instance had seen before the tick (it lost data), or it shows
    /// another number of members at the sequence number last heard, or what
    /// was heard through the event stream stayed behind the same sequence
    /// number for two ticks (events lost, or the stream fell silent: this
    /// instance's own changes, shown from their replies, do not count as
    /// heard).
    fn drifted(&self, topic: &Topic, latest: Latest, seen_before: u64) -> bool {
        let mut state = topic.lock();
        if state.detached {
            return false;
        }
        let (shown, heard) = (state.replica.high(), state.heard.high);
        let drifted = if latest.seq < seen_before {
            true
        } else if latest.seq < shown {
            false // this instance changed the topic since the tick read it
        } else if latest.seq == heard {
            latest.members != state.replica.len() as u64
        } else if latest.seq > heard {
            // Events may still be on their way; the same gap next time is a loss.
            state.behind_at.replace(latest.seq) == Some(latest.seq)
        } else {
            false
        };
        if drifted || latest.seq <= heard {
            state.behind_at = None;
        }
        drifted
    }
}
