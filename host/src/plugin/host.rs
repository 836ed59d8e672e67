//! The host side of the WIT imports: presence operations, logging, the clock
//! and the plugin key-value store, each charged against the call's budget and
//! checked against the size limits before anything reaches the engine.

use super::bindings::presence::plugin::{clock, kv, log, presence, types};
use super::state::GuestState;
use crate::engine::{ConnId, Envelope};
use serde_json::value::RawValue;
use std::time::Duration;

type HostResult<T> = wasmtime::Result<Result<T, String>>;

impl types::Host for GuestState {}

impl GuestState {
    fn json(&self, what: &str, text: String) -> Result<Box<RawValue>, String> {
        self.check_len(what, &text)?;
        RawValue::from_string(text).map_err(|e| format!("{what} is not valid JSON: {e}"))
    }
}

impl presence::Host for GuestState {
    async fn join(&mut self, conn: ConnId, topic: String) -> HostResult<()> {
        self.charge()?;
        let presence = match self.env.presence() {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        Ok(presence.join(conn, &topic).await.map_err(|e| e.to_string()))
    }

    async fn leave(&mut self, conn: ConnId, topic: Option<String>) -> HostResult<()> {
        self.charge()?;
        let presence = match self.env.presence() {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        Ok(presence.leave(conn, topic.as_deref()).await.map_err(|e| e.to_string()))
    }

    async fn sync(&mut self, conn: ConnId, topic: String) -> HostResult<()> {
        self.charge()?;
        let presence = match self.env.presence() {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        Ok(presence.sync(conn, &topic).await.map_err(|e| e.to_string()))
    }

    async fn unsync(&mut self, conn: ConnId, topic: String) -> wasmtime::Result<()> {
        self.charge()?;
        if let Ok(presence) = self.env.presence() {
            presence.unsync(conn, &topic).await;
        }
        Ok(())
    }

    async fn list(&mut self, topic: String) -> HostResult<String> {
        self.charge()?;
        let presence = match self.env.presence() {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        Ok(match presence.list(&topic).await {
            Ok(members) => serde_json::to_string(&members).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        })
    }

    async fn count(&mut self, topic: String) -> HostResult<u64> {
        self.charge()?;
        let presence = match self.env.presence() {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        Ok(presence.count(&topic).await.map_err(|e| e.to_string()))
    }

    async fn publish(&mut self, topic: String, event: String, data: String) -> HostResult<()> {
        self.charge()?;
        let data = match self.json("publish data", data) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.env.presence().map(|p| p.publish(&topic, &Envelope::new(topic.clone(), event, data))))
    }

    async fn send(&mut self, conn: ConnId, topic: String, event: String, data: String) -> HostResult<()> {
        self.charge()?;
        let data = match self.json("send data", data) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.env.presence().map(|p| p.send(conn, &Envelope::new(topic, event, data))))
    }
}

impl log::Host for GuestState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.charge()?;
        if self.log_lines_left == 0 || !self.env.log.admit() {
            self.env.metrics.dropped_log_lines.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        self.log_lines_left -= 1;
        let message: String = message.chars().take(4096).collect();
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
