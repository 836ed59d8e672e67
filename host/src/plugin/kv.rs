//! The plugin key-value store: small values with TTLs and atomic increments,
//! private to plugins. On Redis it is shared by every instance (enough for a
//! cross-instance rate limiter); keys live under `<prefix>-kv:`, which no
//! presence key starts with, so a guest can never reach presence state.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Longest key a guest may use.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value a guest may store.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[async_trait]
pub trait PluginKv: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<String>, String>;
    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), String>;
    /// Add `delta`; a key created by this call (or without expiry) gets `ttl`.
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String>;
    async fn delete(&self, key: &str) -> Result<(), String>;
}

/// Reject keys and values over the limits, naming the limit.
pub fn check(key: &str, value: Option<&str>) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("kv key must be 1..={MAX_KEY_BYTES} bytes, got {}", key.len()));
    }
    if let Some(value) = value.filter(|v| v.len() > MAX_VALUE_BYTES) {
        return Err(format!("kv value is {} bytes, over the limit of {MAX_VALUE_BYTES}", value.len()));
    }
    Ok(())
}

/// In-process store (the host runs without Redis).
#[derive(Default)]
pub struct MemoryKv {
    entries: Mutex<HashMap<String, (String, Option<Instant>)>>,
}

impl MemoryKv {
    fn live(entries: &mut HashMap<String, (String, Option<Instant>)>, key: &str) -> Option<(String, Option<Instant>)> {
        match entries.get(key) {
            Some((_, Some(expiry))) if *expiry <= Instant::now() => {
                entries.remove(key);
                None
            }
            other => other.cloned(),
        }
    }
}

#[async_trait]
impl PluginKv for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<String>, String> {
        check(key, None)?;
        Ok(Self::live(&mut self.entries.lock().unwrap(), key).map(|(v, _)| v))
    }

    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), String> {
        check(key, Some(value))?;
        self.entries.lock().unwrap().insert(key.to_owned(), (value.to_owned(), ttl.map(|t| Instant::now() + t)));
        Ok(())
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
        check(key, None)?;
        let mut entries = self.entries.lock().unwrap();
        let (current, expiry) = Self::live(&mut entries, key).unwrap_or(("0".into(), None));
        let current: i64 = current.parse().map_err(|_| format!("kv value at {key:?} is not an integer"))?;
        let next = current.checked_add(delta).ok_or("kv increment overflows")?;
        let expiry = expiry.or_else(|| ttl.map(|t| Instant::now() + t));
        entries.insert(key.to_owned(), (next.to_string(), expiry));
        Ok(next)
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        check(key, None)?;
        self.entries.lock().unwrap().remove(key);
        Ok(())
    }
}

static INCREMENT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("kv_increment.lua")));

/// Redis-backed store, shared by every instance using the same prefix.
pub struct RedisKv {
    conn: ConnectionManager,
    namespace: String,
    timeout: Duration,
}

impl RedisKv {
    pub fn new(conn: ConnectionManager, prefix: &str, timeout: Duration) -> Self {
        Self { conn, namespace: format!("{prefix}-kv:"), timeout }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    async fn bounded<T>(&self, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| format!("kv: {e}")),
            Err(_) => Err(format!("kv: timed out after {:?}", self.timeout)),
        }
    }
}

#[async_trait]
impl PluginKv for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<String>, String> {
        check(key, None)?;
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("GET").arg(self.key(key)).query_async(&mut conn)).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), String> {
        check(key, Some(value))?;
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
        }
        self.bounded(cmd.query_async(&mut conn)).await
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
        check(key, None)?;
        let mut conn = self.conn.clone();
        let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
        let mut call = INCREMENT.key(self.key(key));
        call.arg(delta).arg(ttl_ms);
        self.bounded(call.invoke_async(&mut conn)).await
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        check(key, None)?;
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("DEL").arg(self.key(key)).query_async::<i64>(&mut conn)).await.map(|_| ())
    }
}
