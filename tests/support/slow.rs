//! A fault injector around a real backend: every release (`leave`) takes a
//! fixed extra time, as on a Redis that has become slow. Everything else goes
//! straight through, so the store's semantics are the real ones.

use async_trait::async_trait;
use presence::backend::{
    BackendError, BackendEvent, HoldChange, HoldOutcome, HoldTerms, JoinOutcome, LeaveOutcome, Snapshot, TickReport,
    TickTopic,
};
use presence::Backend;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct SlowLeaves {
    pub inner: Arc<dyn Backend>,
    pub delay: Duration,
}

#[async_trait]
impl Backend for SlowLeaves {
    fn instance(&self) -> &str {
        self.inner.instance()
    }
    async fn join(
        &self,
        t: &str,
        k: &str,
        d: &str,
        e: Option<&str>,
        terms: HoldTerms,
    ) -> Result<JoinOutcome, BackendError> {
        self.inner.join(t, k, d, e, terms).await
    }
    async fn leave(&self, t: &str, k: &str) -> Result<LeaveOutcome, BackendError> {
        tokio::time::sleep(self.delay).await;
        self.inner.leave(t, k).await
    }
    async fn apply(
        &self,
        t: &str,
        e: Option<&str>,
        terms: HoldTerms,
        changes: &[HoldChange<'_>],
    ) -> Result<Vec<HoldOutcome>, BackendError> {
        self.inner.apply(t, e, terms, changes).await
    }
    async fn snapshot(&self, t: &str, seen: u64) -> Result<Snapshot, BackendError> {
        self.inner.snapshot(t, seen).await
    }
    async fn count(&self, t: &str) -> Result<u64, BackendError> {
        self.inner.count(t).await
    }
    async fn stats(&self, t: &str) -> Result<presence::backend::TopicCounts, BackendError> {
        self.inner.stats(t).await
    }
    async fn tick(&self, topics: &[TickTopic], ttl: Duration) -> Result<Vec<TickReport>, BackendError> {
        self.inner.tick(topics, ttl).await
    }
    async fn clear(&self) -> Result<(), BackendError> {
        self.inner.clear().await
    }
    async fn watch(&self, t: &str) -> Result<(), BackendError> {
        self.inner.watch(t).await
    }
    fn unwatch(&self, t: &str) {
        self.inner.unwatch(t)
    }
    fn events(&self) -> Option<mpsc::UnboundedReceiver<BackendEvent>> {
        self.inner.events()
    }
    fn shutdown(&self) {
        self.inner.shutdown()
    }
}
