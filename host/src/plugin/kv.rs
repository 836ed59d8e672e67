//! The plugin key-value store: small values with TTLs and atomic increments,
//! private to plugins, within a quota of keys and bytes per plugin. On Redis
//! it is shared by every instance (enough for a cross-instance rate limiter)
//! and has its own connection, so plugin traffic never queues in front of a
//! heartbeat. Its keys live under `<prefix>#kv{<prefix>.<shard>}:` (see
//! `kv_prelude.lua`): `#` never appears in a prefix, so neither this
//! deployment's presence keys nor any other deployment's keys can overlap.
//!
//! Each key belongs to one of up to [`MAX_SHARDS`] shards (by its hash), and
//! each shard keeps its values and its share of the quota in one hash slot,
//! so a write and its quota check stay one atomic script while a cluster
//! spreads the store over its masters. A small quota (under
//! [`KEYS_PER_SHARD`] keys a shard) keeps one shard and is exact; a large
//! one is enforced per shard (each holds its share, rounded up), so a store
//! filled to the brim may be refused a little before the total.

use crate::backend::redis::bounded;
use crate::backend::redis::connection::Endpoint;
use crate::backend::redis::scripts::{Call, Lua};
use crate::backend::redis::{RedisConnection, RedisOptions};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Longest key a guest may use.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value a guest may store.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Quota keys per shard below which the store keeps fewer shards.
pub const KEYS_PER_SHARD: usize = 256;
/// Most shards of a Redis store.
pub const MAX_SHARDS: usize = 16;

/// How much one plugin may keep in the store (keys and values together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Keys.
    pub max_keys: usize,
    /// Bytes of keys and values.
    pub max_bytes: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Self { max_keys: 10_000, max_bytes: 16 << 20 }
    }
}

impl Quota {
    fn keys_error(&self) -> String {
        format!("kv quota: at most {} keys; delete some or let them expire", self.max_keys)
    }

    fn bytes_error(&self) -> String {
        format!("kv quota: at most {} bytes of keys and values; delete some or let them expire", self.max_bytes)
    }
}

/// The store behind the plugin's `kv` imports; errors are the messages the
/// guest receives.
#[async_trait]
pub trait PluginKv: Send + Sync + 'static {
    /// The value of `key`, if it is set and not expired.
    async fn get(&self, key: &str) -> Result<Option<String>, String>;
    /// Set `key` (expiring after `ttl`, or never), within the quota.
    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), String>;
    /// Add `delta`; a key created by this call (or without expiry) gets `ttl`.
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String>;
    /// Remove `key` (nothing if it is not set).
    async fn delete(&self, key: &str) -> Result<(), String>;
}

/// Longest expiry a guest may set (a year): anything longer is a mistake,
/// and past what Redis's `PEXPIRE` and the host's clock take.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Reject an expiry over [`MAX_TTL`] before anything is written.
pub fn check_ttl(ttl: Option<Duration>) -> Result<(), String> {
    match ttl {
        Some(ttl) if ttl > MAX_TTL => {
            Err(format!("kv ttl-ms is {}, over the limit of {} (a year)", ttl.as_millis(), MAX_TTL.as_millis()))
        }
        _ => Ok(()),
    }
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

/// Bytes a counter is accounted for (its widest value), as in the scripts.
const COUNTER_BYTES: usize = 20;

/// In-process store (the host runs without Redis). Expired entries are
/// reclaimed at least once a second by the writes, and before any write
/// that would otherwise be refused by the quota.
pub struct MemoryKv {
    quota: Quota,
    state: Mutex<MemoryState>,
}

struct Entry {
    value: String,
    expiry: Option<Instant>,
    /// Bytes accounted against the quota.
    size: usize,
}

struct MemoryState {
    entries: HashMap<String, Entry>,
    bytes: usize,
    next_reclaim: Instant,
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self::new(Quota::default())
    }
}

impl MemoryState {
    fn live(&mut self, key: &str, now: Instant) -> Option<&Entry> {
        if self.entries.get(key).is_some_and(|e| e.expiry.is_some_and(|at| at <= now)) {
            self.remove(key);
        }
        self.entries.get(key)
    }

    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.size;
        }
    }

    fn reclaim(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.entries.iter().filter(|(_, e)| e.expiry.is_some_and(|at| at <= now)).map(|(k, _)| k.clone()).collect();
        for key in expired {
            self.remove(&key);
        }
        self.next_reclaim = now + Duration::from_secs(1);
    }

    /// Store an entry if the quota allows it.
    fn put(&mut self, quota: &Quota, key: &str, entry: Entry, now: Instant) -> Result<(), String> {
        if now >= self.next_reclaim {
            self.reclaim(now);
        }
        let fits = |state: &Self| {
            let old = state.entries.get(key).map(|e| e.size);
            if old.is_none() && state.entries.len() >= quota.max_keys {
                return Err(quota.keys_error());
            }
            if state.bytes - old.unwrap_or(0) + entry.size > quota.max_bytes {
                return Err(quota.bytes_error());
            }
            Ok(())
        };
        if fits(self).is_err() {
            self.reclaim(now);
            fits(self)?;
        }
        self.remove(key);
        self.bytes += entry.size;
        self.entries.insert(key.to_owned(), entry);
        Ok(())
    }
}

impl MemoryKv {
    /// An empty store with this quota.
    pub fn new(quota: Quota) -> Self {
        let state = MemoryState { entries: HashMap::new(), bytes: 0, next_reclaim: Instant::now() };
        Self { quota, state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keys held now (expired ones not yet reclaimed included).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl PluginKv for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<String>, String> {
        check(key, None)?;
        Ok(self.lock().live(key, Instant::now()).map(|e| e.value.clone()))
    }

    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), String> {
        check(key, Some(value))?;
        check_ttl(ttl)?;
        let now = Instant::now();
        let entry = Entry { value: value.to_owned(), expiry: ttl.map(|t| now + t), size: key.len() + value.len() };
        self.lock().put(&self.quota, key, entry, now)
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
        check(key, None)?;
        check_ttl(ttl)?;
        let now = Instant::now();
        let mut state = self.lock();
        let (current, expiry) = match state.live(key, now) {
            Some(entry) => (
                entry.value.parse::<i64>().map_err(|_| format!("kv value at {key:?} is not an integer"))?,
                entry.expiry,
            ),
            None => (0, None),
        };
        let next = current.checked_add(delta).ok_or("kv increment overflows")?;
        let expiry = expiry.or_else(|| ttl.map(|t| now + t));
        let entry = Entry { value: next.to_string(), expiry, size: key.len() + COUNTER_BYTES };
        state.put(&self.quota, key, entry, now)?;
        Ok(next)
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        check(key, None)?;
        self.lock().remove(key);
        Ok(())
    }
}

fn kv_script(body: &str) -> Lua {
    Lua::new(format!("{}{body}", include_str!("kv_prelude.lua")))
}

// Called like the presence scripts (`Call::invoke`): `EVAL` where a node
// lacks them, never a `SCRIPT LOAD` to every node of a cluster.
static SET: LazyLock<Lua> = LazyLock::new(|| kv_script(include_str!("kv_set.lua")));
static INCREMENT: LazyLock<Lua> = LazyLock::new(|| kv_script(include_str!("kv_increment.lua")));
static DELETE: LazyLock<Lua> = LazyLock::new(|| kv_script(include_str!("kv_delete.lua")));

/// Redis-backed store, shared by every instance using the same prefix.
pub struct RedisKv {
    conn: RedisConnection,
    /// `<prefix>#kv{<prefix>}:`
    prefix: String,
    /// How many shards, and each one's share of the quota.
    shards: usize,
    shard_quota: Quota,
    quota: Quota,
    timeout: Duration,
}

impl RedisKv {
    /// The store on its own connection to the engine's Redis (one node or a
    /// cluster), not the engine's connection.
    pub async fn connect(options: &RedisOptions, quota: Quota) -> Result<Self, crate::backend::BackendError> {
        let conn = Endpoint::resolve(options).await?.connect().await?;
        Ok(Self::new(conn, &options.prefix, options.timeout, quota))
    }

    /// The store on an existing connection.
    pub fn new(conn: RedisConnection, prefix: &str, timeout: Duration, quota: Quota) -> Self {
        let shards = (quota.max_keys / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let shard_quota =
            Quota { max_keys: quota.max_keys.div_ceil(shards), max_bytes: quota.max_bytes.div_ceil(shards) };
        Self { conn, prefix: prefix.to_owned(), shards, shard_quota, quota, timeout }
    }

    /// `<prefix>#kv{<prefix>.<shard>}:`, the shard of `key`.
    fn namespace(&self, key: &str) -> String {
        let shard = crate::backend::redis::key_slot(key.as_bytes()) as usize % self.shards;
        format!("{0}#kv{{{0}.{shard}}}:", self.prefix)
    }

    fn value_key(&self, key: &str) -> String {
        format!("{}v:{key}", self.namespace(key))
    }

    /// A call of `lua` on `key`'s shard: the value's key, then the
    /// shard's quota bookkeeping.
    fn call(&self, lua: &'static LazyLock<Lua>, key: &str) -> Call {
        let namespace = self.namespace(key);
        let mut call = LazyLock::force(lua).call();
        call.key(format!("{namespace}v:{key}")).key(format!("{namespace}index")).key(format!("{namespace}sizes"));
        call
    }

    /// Run one Redis call under the timeout; errors are the guest's messages.
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        bounded(op, self.timeout, call).await.map_err(|e| format!("kv: {e}"))
    }

    /// `{'ok', ...}` or a quota refusal, as the scripts reply.
    fn quota_checked(&self, reply: Vec<redis::Value>) -> Result<Vec<redis::Value>, String> {
        match reply.first() {
            Some(redis::Value::BulkString(status)) if status == b"quota" => match reply.get(1) {
                Some(redis::Value::BulkString(what)) if what == b"keys" => Err(self.quota.keys_error()),
                _ => Err(self.quota.bytes_error()),
            },
            Some(_) => Ok(reply),
            None => Err("kv: empty reply".into()),
        }
    }
}

#[async_trait]
impl PluginKv for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<String>, String> {
        check(key, None)?;
        let mut conn = self.conn.clone();
        self.bounded("kv.get", redis::cmd("GET").arg(self.value_key(key)).query_async(&mut conn)).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), String> {
        check(key, Some(value))?;
        check_ttl(ttl)?;
        let mut conn = self.conn.clone();
        let mut call = self.call(&SET, key);
        call.arg(key).arg(value).arg(ttl.map_or(0, |t| t.as_millis().max(1) as u64));
        call.arg(self.shard_quota.max_keys).arg(self.shard_quota.max_bytes);
        let reply: Vec<redis::Value> = self.bounded("kv.set", call.invoke(&mut conn)).await?;
        self.quota_checked(reply).map(|_| ())
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
        check(key, None)?;
        check_ttl(ttl)?;
        let mut conn = self.conn.clone();
        let mut call = self.call(&INCREMENT, key);
        call.arg(key).arg(delta).arg(ttl.map_or(0, |t| t.as_millis().max(1) as u64));
        call.arg(self.shard_quota.max_keys).arg(self.shard_quota.max_bytes);
        let reply: Vec<redis::Value> = self.bounded("kv.increment", call.invoke(&mut conn)).await?;
        match self.quota_checked(reply)?.get(1) {
            Some(redis::Value::Int(value)) => Ok(*value),
            other => Err(format!("kv: unexpected increment reply {other:?}")),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        check(key, None)?;
        let mut conn = self.conn.clone();
        let mut call = self.call(&DELETE, key);
        call.arg(key);
        let reply: Vec<redis::Value> = self.bounded("kv.delete", call.invoke(&mut conn)).await?;
        self.quota_checked(reply).map(|_| ())
    }
}
