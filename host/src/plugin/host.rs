//! The host side of the WIT imports: presence operations, logging, the clock
//! and the plugin key-value store, each charged against the call's budget and
//! checked against the size limits before anything reaches the engine.

use super::bindings::presence::plugin::{clock, kv, log, presence, types};
use super::state::GuestState;
use crate::engine::{deferred_is_done, ConnId, Envelope};
use crate::Presence;
use serde_json::value::RawValue;
use std::future::Future;
use std::time::Duration;

type HostResult<T> = wasmtime::Result<Result<T, String>>;

impl types::Host for GuestState {}

impl GuestState {
    fn json(&self, what: &str, text: String) -> Result<Box<RawValue>, String> {
        self.check_len(what, &text)?;
        RawValue::from_string(text).map_err(|e| format!("{what} is not valid JSON: {e}"))
    }

    /// The parts of an envelope a guest sends, checked: topic and event
    /// names, and the data as JSON.
    fn envelope_parts(&self, topic: &str, event: &str, what: &str, data: String) -> Result<Box<RawValue>, String> {
        self.check_name("topic", topic)?;
        self.check_name("event", event)?;
        self.json(what, data)
    }
}

impl GuestState {
    /// Charge one host call; then, if the arguments passed their checks
    /// (`checked`), run `op` on the engine with what the checks produced (an
    /// error string if the engine is gone).
    async fn with_presence<A, T, Fut>(
        &mut self,
        checked: Result<A, String>,
        op: impl FnOnce(Presence, A) -> Fut,
    ) -> HostResult<T>
    where
        Fut: Future<Output = Result<T, String>>,
    {
        self.charge()?;
        Ok(match (checked, self.env.presence()) {
            (Ok(args), Ok(presence)) => op(presence, args).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        })
    }
}

/// A join or sync a guest asked for, waited on for at most `budget`: past
/// it, the operation goes on by itself (made when the backend answers; a
/// join refused late closes the connection, which retries) and the guest is
/// told it is kept, so its hook answers within its deadline instead of
/// being stopped while the engine goes on with the join.
async fn kept_after(
    budget: Duration,
    conn: ConnId,
    topic: &str,
    op: impl Future<Output = Result<(), crate::Error>>,
) -> Result<(), String> {
    let result = tokio::time::timeout(budget, op).await.unwrap_or_else(|_| {
        tracing::debug!(%conn, topic, "a hook's presence call is still waiting on the backend; kept");
        Ok(())
    });
    deferred_is_done(result, conn, topic).map_err(|e| e.to_string())
}

impl GuestState {
    /// Three quarters of what is left of the call's deadline: what a host
    /// call that waits on the backend may take.
    fn wait_budget(&self) -> Duration {
        let left =
            self.deadline_at.map_or(Duration::ZERO, |at| at.saturating_duration_since(std::time::Instant::now()));
        left - left / 4
    }
}

impl presence::Host for GuestState {
    async fn join(&mut self, conn: u64, topic: String) -> HostResult<()> {
        let conn = ConnId::new(conn);
        let budget = self.wait_budget();
        self.with_presence(self.check_name("topic", &topic), |p, ()| async move {
            kept_after(budget, conn, &topic, p.join(conn, &topic)).await
        })
        .await
    }

    async fn leave(&mut self, conn: u64, topic: Option<String>) -> HostResult<()> {
        let conn = ConnId::new(conn);
        self.with_presence(topic.as_deref().map_or(Ok(()), |t| self.check_name("topic", t)), |p, ()| async move {
            match topic.as_deref() {
                Some(topic) => p.leave(conn, topic).await,
                None => p.leave_all(conn).await,
            }
            .map_err(|e| e.to_string())
        })
        .await
    }

    async fn sync(&mut self, conn: u64, topic: String) -> HostResult<()> {
        let conn = ConnId::new(conn);
        let budget = self.wait_budget();
        self.with_presence(self.check_name("topic", &topic), |p, ()| async move {
            kept_after(budget, conn, &topic, p.sync(conn, &topic)).await
        })
        .await
    }

    async fn unsync(&mut self, conn: u64, topic: String) -> wasmtime::Result<()> {
        let conn = ConnId::new(conn);
        let _ = self
            .with_presence(self.check_name("topic", &topic), |p, ()| async move {
                p.unsync(conn, &topic);
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn list(&mut self, topic: String) -> HostResult<String> {
        self.with_presence(self.check_name("topic", &topic), |p, ()| async move {
            let members = p.list(&topic).await.map_err(|e| e.to_string())?;
            serde_json::to_string(&members).map_err(|e| e.to_string())
        })
        .await
    }

    async fn count(&mut self, topic: String) -> HostResult<u64> {
        self.with_presence(self.check_name("topic", &topic), |p, ()| async move {
            p.count(&topic).await.map_err(|e| e.to_string())
        })
        .await
    }

    async fn publish(&mut self, topic: String, event: String, data: String) -> HostResult<()> {
        let data = self.envelope_parts(&topic, &event, "publish data", data);
        self.with_presence(data, |p, data| async move {
            p.publish(&topic, &Envelope::new(topic.clone(), event, data));
            Ok(())
        })
        .await
    }

    async fn count_only(&mut self, prefix: String, above: Option<u64>) -> HostResult<()> {
        self.with_presence(self.check_len("prefix", &prefix), |p, ()| async move {
            p.set_count_only(&prefix, above).map_err(|e| e.to_string())
        })
        .await
    }

    async fn send(&mut self, conn: u64, topic: String, event: String, data: String) -> HostResult<()> {
        let conn = ConnId::new(conn);
        let data = self.envelope_parts(&topic, &event, "send data", data);
        self.with_presence(data, |p, data| async move {
            p.send(conn, &Envelope::new(topic, event, data));
            Ok(())
        })
        .await
    }
}

impl log::Host for GuestState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.charge()?;
        if !self.admit_line() {
            return Ok(());
        }
        let message = super::single_line(&message, super::state::MAX_LINE);
        match level {
            log::Level::Debug => tracing::debug!(target: "plugin", "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", "{message}"),
        }
        Ok(())
    }
}

impl clock::Host for GuestState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.charge()?;
        Ok(crate::backend::now_ms())
    }
}

impl kv::Host for GuestState {
    async fn get(&mut self, key: String) -> HostResult<Option<String>> {
        self.charge()?;
        Ok(self.env.kv.get(&key).await)
    }

    async fn set(&mut self, key: String, value: String, ttl_ms: Option<u64>) -> HostResult<()> {
        self.charge()?;
        Ok(self.env.kv.set(&key, &value, ttl_ms.map(Duration::from_millis)).await)
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> HostResult<i64> {
        self.charge()?;
        Ok(self.env.kv.increment(&key, delta, ttl_ms.map(Duration::from_millis)).await)
    }

    async fn delete(&mut self, key: String) -> HostResult<()> {
        self.charge()?;
        Ok(self.env.kv.delete(&key).await)
    }
}
