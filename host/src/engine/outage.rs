//! Whether the backend is in an outage, as the engine's own calls see it: a
//! circuit breaker in front of the calls that change or seed a topic.
//!
//! Once a call fails for a passing reason (a timeout, Redis down, a cluster
//! between owners of a slot), joins, leaves and syncs stop waiting on a
//! backend that cannot answer: they are kept as wanted and return at once
//! (`Error::Deferred`), one probe call being let through every
//! [`PROBE_EVERY`]. The first call that succeeds ends the outage and wakes
//! the heartbeat, which settles everything kept meanwhile right away instead
//! of at its next period. So a reconnect storm against a dead Redis costs no
//! pile of timed-out calls, and users who opened a tab during the outage are
//! listed moments after the backend is back.

use crate::backend::BackendError;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often a call is let through to test a backend in an outage.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(200);

#[derive(Default)]
pub(super) struct Outage {
    /// `Some`: in an outage, with when the last call was let through.
    down: Mutex<Option<Instant>>,
    /// Notified when an outage ends (the heartbeat settles at once).
    ended: std::sync::Arc<Notify>,
}

impl Outage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// May a call go to the backend now? Always outside an outage; during
    /// one, a call every [`PROBE_EVERY`].
    pub fn may_call(&self) -> bool {
        let mut down = self.lock();
        match *down {
            None => true,
            Some(last) if last.elapsed() >= PROBE_EVERY => {
                *down = Some(Instant::now());
                true
            }
            Some(_) => false,
        }
    }

    /// What a call that was not let through reports.
    pub fn refusal(&self, op: &'static str) -> BackendError {
        BackendError::unavailable(op, "the backend is unreachable (a recent call failed); kept for when it answers")
    }

    /// Record what a backend call did: a passing failure starts (or
    /// continues) an outage, an answer ends one.
    pub fn observe<T>(&self, result: &Result<T, BackendError>) {
        match result {
            Err(e) if e.outcome_unknown() => {
                let mut down = self.lock();
                if down.is_none() {
                    tracing::warn!(error = %e, "backend unreachable: joins and leaves are kept until it answers");
                    *down = Some(Instant::now());
                }
            }
            _ => {
                let ended = self.lock().take().is_some();
                if ended {
                    tracing::info!("backend answers again: settling what was kept");
                    self.ended.notify_one();
                }
            }
        }
    }

    /// What is notified when an outage ends (for the heartbeat, which must
    /// not keep the engine alive while it waits).
    pub fn ended_handle(&self) -> std::sync::Arc<Notify> {
        self.ended.clone()
    }

    /// In an outage now.
    pub fn is_down(&self) -> bool {
        self.lock().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_opens_the_breaker_and_an_answer_closes_it() {
        let outage = Outage::default();
        assert!(outage.may_call() && !outage.is_down());
        outage.observe::<()>(&Err(BackendError::Timeout { op: "join", after: Duration::from_secs(1) }));
        assert!(outage.is_down());
        assert!(!outage.may_call(), "no call right after the failure");
        std::thread::sleep(PROBE_EVERY);
        assert!(outage.may_call(), "one probe per period");
        assert!(!outage.may_call());
        // A refusal (not a passing failure) says the backend answered.
        outage.observe::<()>(&Err(BackendError::protocol("join", "bad reply")));
        assert!(!outage.is_down() && outage.may_call());
    }
}
