//! A [`Backend`] wrapper that times every call and counts failures, for the
//! server's metrics; it changes nothing else.

use super::{
    Backend, BackendError, BackendEvent, HoldChange, HoldOutcome, HoldTerms, JoinOutcome, LeaveOutcome, Snapshot,
    TickReport, TickTopic, TopicCounts,
};
use crate::metrics::{type_line, Histogram};
use async_trait::async_trait;
use std::fmt::Write;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Default)]
pub struct BackendMetrics {
    pub latency: Histogram,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
}

impl BackendMetrics {
    pub fn render(&self, out: &mut String) {
        type_line(out, "presence_backend_call_seconds", "histogram");
        self.latency.render(out, "presence_backend_call_seconds", "");
        type_line(out, "presence_backend_errors_total", "counter");
        let _ = writeln!(out, "presence_backend_errors_total{{kind=\"timeout\"}} {}", self.timeouts.load(Relaxed));
        let _ = writeln!(out, "presence_backend_errors_total{{kind=\"other\"}} {}", self.errors.load(Relaxed));
    }
}

pub struct Measured {
    inner: Arc<dyn Backend>,
    pub metrics: Arc<BackendMetrics>,
}

impl Measured {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self { inner, metrics: Arc::default() }
    }

    async fn time<T>(&self, call: impl Future<Output = Result<T, BackendError>>) -> Result<T, BackendError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.latency.observe(started.elapsed());
        match &result {
            Err(BackendError::Timeout { .. }) => self.metrics.timeouts.fetch_add(1, Relaxed),
            Err(_) => self.metrics.errors.fetch_add(1, Relaxed),
            Ok(_) => 0,
        };
        result
    }
}

#[async_trait]
impl Backend for Measured {
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
        self.time(self.inner.join(t, k, d, e, terms)).await
    }
    async fn leave(&self, t: &str, k: &str) -> Result<LeaveOutcome, BackendError> {
        self.time(self.inner.leave(t, k)).await
    }
    async fn apply(
        &self,
        t: &str,
        e: Option<&str>,
        terms: HoldTerms,
        changes: &[HoldChange<'_>],
    ) -> Result<Vec<HoldOutcome>, BackendError> {
        self.time(self.inner.apply(t, e, terms, changes)).await
    }
    async fn snapshot(&self, t: &str, seen: u64) -> Result<Snapshot, BackendError> {
        self.time(self.inner.snapshot(t, seen)).await
    }
    async fn count(&self, t: &str) -> Result<u64, BackendError> {
        self.time(self.inner.count(t)).await
    }
    async fn stats(&self, t: &str) -> Result<TopicCounts, BackendError> {
        self.time(self.inner.stats(t)).await
    }
    async fn tick(&self, topics: &[TickTopic], ttl: Duration) -> Result<Vec<TickReport>, BackendError> {
        self.time(self.inner.tick(topics, ttl)).await
    }
    async fn clear(&self) -> Result<(), BackendError> {
        self.time(self.inner.clear()).await
    }
    async fn watch(&self, t: &str) -> Result<(), BackendError> {
        self.time(self.inner.watch(t)).await
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
    fn degraded(&self) -> Option<String> {
        self.inner.degraded()
    }
}
