//! The Redis backend: presence shared by every instance on one Redis (6.2+,
//! no HEXPIRE needed), cluster-ready (every key of a topic in one slot).
//!
//! Each operation is one Lua script (see the `.lua` files beside this module,
//! each headed by its KEYS, ARGV, reply and the property it serves), called by
//! SHA over one multiplexed connection; the heartbeat is one pipelined batch.
//!
//! ## Behavior on failure
//!
//! - Every call is bounded by [`RedisOptions::timeout`]: a stalled Redis
//!   (SIGSTOP, partition) yields [`BackendError::Timeout`], a dead one
//!   [`BackendError::Unavailable`]; nothing hangs and nothing queues unbounded.
//! - The command connection reconnects in the background
//!   ([`ConnectionManager`]); the next call uses the new connection.
//! - The subscriber reconnects by itself, subscribes its channels again and
//!   emits [`BackendEvent::Resynced`] so the engine re-reads its topics.
//! - Scripts lost with a restart (NOSCRIPT) are loaded again transparently.
//! - A Redis that came back empty (or lost some writes) is noticed by the next
//!   heartbeat tick ([`TickOutcome::Lost`]: fewer users held than the instance
//!   believes) and the engine re-asserts its users, pipelined.
//! - Expiries use Redis's clock (`TIME` inside the scripts). The instance's own
//!   clock is only compared with it, to warn when it is far off
//!   ([`RedisBackend::clock_skew`]).

mod keys;
mod scripts;
mod subscriber;

pub use keys::TopicKeys;

use super::{
    backstop, now_ms, Backend, BackendError, BackendEvent, HoldChange, HoldOutcome, HoldTerms, JoinOutcome,
    LeaveOutcome, Snapshot, TickReport, TickTopic,
};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use subscriber::{Command, Subscriber};
use tokio::sync::{mpsc, oneshot};

type ScriptCall = redis::ScriptInvocation<'static>;

/// How to reach Redis and name our keys.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// First part of every key and channel; letters, digits, `_ . : -` only.
    pub prefix: String,
    /// Bound on every Redis call (connect, command, subscribe).
    pub timeout: Duration,
    /// Tests only: pretend this instance's clock is off by this many
    /// milliseconds (what a host with a wrong clock would report).
    #[doc(hidden)]
    pub clock_offset_ms: i64,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), prefix: "presence".into(), timeout: Duration::from_secs(2), clock_offset_ms: 0 }
    }
}

/// How far off an instance's clock may be before it is logged: expiries do
/// not depend on it, but the plugin clock and the logs do.
const SKEW_WARNING_MS: i64 = 1000;

/// Presence state in Redis, speaking for one instance.
pub struct RedisBackend {
    conn: ConnectionManager,
    prefix: String,
    instance: String,
    timeout: Duration,
    subscriber: Subscriber,
    events: Mutex<Option<mpsc::UnboundedReceiver<BackendEvent>>>,
    clock_offset_ms: i64,
    /// This instance's clock minus Redis's, as of the last tick (ms).
    skew_ms: AtomicI64,
    /// When a tick last refreshed the backstop expiry of every held topic's
    /// keys: once a quarter of the backstop is enough, not every tick.
    backstop_refreshed: Mutex<Option<std::time::Instant>>,
}

fn map_err(op: &'static str, timeout: Duration, e: RedisError) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout { op, after: timeout }
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        BackendError::Unavailable { op, reason: e.to_string() }
    } else {
        BackendError::Protocol { op, reason: e.to_string() }
    }
}

impl RedisBackend {
    /// Connect (bounded by `options.timeout`) and start the subscriber.
    pub async fn connect(options: RedisOptions) -> Result<Self, BackendError> {
        let valid = !options.prefix.is_empty()
            && options.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !valid {
            return Err(BackendError::Protocol {
                op: "connect",
                reason: format!("invalid key prefix {:?}: use letters, digits, `_`, `.`, `:` or `-`", options.prefix),
            });
        }
        let client = redis::Client::open(options.url.as_str()).map_err(|e| map_err("connect", options.timeout, e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(options.timeout, client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| BackendError::Timeout { op: "connect", after: options.timeout })?
            .map_err(|e| map_err("connect", options.timeout, e))?;
        // Load every script up front, so pipelined calls (which cannot load
        // on demand) find them; after a Redis restart `pipeline` reloads.
        let mut load = redis::pipe();
        for script in scripts::all() {
            load.load_script(script);
        }
        let mut loader = conn.clone();
        tokio::time::timeout(options.timeout, load.query_async::<Vec<String>>(&mut loader))
            .await
            .map_err(|_| BackendError::Timeout { op: "connect", after: options.timeout })?
            .map_err(|e| map_err("connect", options.timeout, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let subscriber = Subscriber::start(client, options.prefix.clone(), options.timeout, tx);
        Ok(Self {
            conn,
            prefix: options.prefix,
            instance: super::new_instance_id(),
            timeout: options.timeout,
            subscriber,
            events: Mutex::new(Some(rx)),
            clock_offset_ms: options.clock_offset_ms,
            skew_ms: AtomicI64::new(0),
            backstop_refreshed: Mutex::new(None),
        })
    }

    /// This instance's clock minus Redis's, in ms, as measured by the last
    /// heartbeat (0 before the first). Presence does not depend on it.
    pub fn clock_skew(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }

    fn local_now_ms(&self) -> u64 {
        now_ms().saturating_add_signed(self.clock_offset_ms)
    }

    /// The backstop to set on this tick's topics, when it is due: a join
    /// sets it on the keys it creates, and the ticks refresh it every quarter
    /// of its length, so a held topic's keys never reach it.
    fn backstop_due(&self, ttl: Duration) -> Option<Duration> {
        let keep = backstop(ttl);
        let mut refreshed = self.backstop_refreshed.lock().unwrap_or_else(|p| p.into_inner());
        if refreshed.is_some_and(|at| at.elapsed() < keep / 4) {
            return None;
        }
        *refreshed = Some(std::time::Instant::now());
        Some(keep)
    }

    fn note_skew(&self, redis_now: u64, local_now: u64) {
        let skew = local_now as i64 - redis_now as i64;
        let before = self.skew_ms.swap(skew, Ordering::Relaxed);
        if skew.abs() > SKEW_WARNING_MS && before.abs() <= SKEW_WARNING_MS {
            tracing::warn!(skew_ms = skew, "this instance's clock is off from Redis's; presence uses Redis's clock");
        }
    }

    fn join_call(&self, topic: &str, key: &str, data: &str, epoch: Option<&str>, terms: HoldTerms) -> ScriptCall {
        let k = self.keys(topic);
        let mut call = scripts::JOIN.prepare_invoke();
        call.key(&k.users).key(&k.refs).key(&k.inst).key(k.held(&self.instance)).key(&k.seq).key(&k.epoch);
        call.arg(&self.instance).arg(key).arg(data).arg(terms.ttl.as_millis() as u64);
        call.arg(backstop(terms.ttl).as_millis() as u64).arg(epoch.unwrap_or("")).arg(&k.channel);
        call.arg(terms.max_members);
        call
    }

    fn leave_call(&self, topic: &str, key: &str) -> ScriptCall {
        let k = self.keys(topic);
        let mut call = scripts::LEAVE.prepare_invoke();
        call.key(&k.users).key(&k.refs).key(&k.inst).key(k.held(&self.instance)).key(&k.seq);
        // The backstop only needs to outlive the other holders' next tick.
        call.arg(&self.instance).arg(key).arg(backstop(Duration::from_secs(60)).as_millis() as u64).arg(&k.channel);
        call
    }

    /// The SHA1 of each script by operation name, for tools that call the
    /// scripts directly (the benchmark's `redis-benchmark` baseline).
    pub fn script_hashes() -> [(&'static str, &'static str); 6] {
        let names = ["join", "leave", "tick", "snapshot", "count", "clear"];
        let all = scripts::all();
        std::array::from_fn(|i| (names[i], all[i].get_hash()))
    }

    /// The multiplexed command connection (e.g. for the plugin key-value store).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self, topic: &str) -> TopicKeys {
        TopicKeys::new(&self.prefix, topic)
    }

    /// Run one Redis call under the timeout, mapping its error.
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| map_err(op, self.timeout, e)),
            Err(_) => Err(BackendError::Timeout { op, after: self.timeout }),
        }
    }

    async fn invoke<T: FromRedisValue>(&self, op: &'static str, invocation: ScriptCall) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        self.bounded(op, invocation.invoke_async(&mut conn)).await
    }

    /// Run a pipeline of script calls; after a NOSCRIPT (Redis restarted),
    /// load every script and try once more.
    async fn pipeline<T: FromRedisValue>(&self, op: &'static str, pipe: &redis::Pipeline) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut load = redis::pipe();
                for script in scripts::all() {
                    load.load_script(script);
                }
                self.bounded(op, load.query_async::<Vec<String>>(&mut conn)).await?;
                self.bounded(op, pipe.query_async::<T>(&mut conn)).await
            }
            Ok(result) => result.map_err(|e| map_err(op, self.timeout, e)),
            Err(_) => Err(BackendError::Timeout { op, after: self.timeout }),
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn join(
        &self,
        topic: &str,
        key: &str,
        data: &str,
        epoch: Option<&str>,
        terms: HoldTerms,
    ) -> Result<JoinOutcome, BackendError> {
        let scripts::JoinReply(outcome) = self.invoke("join", self.join_call(topic, key, data, epoch, terms)).await?;
        Ok(outcome)
    }

    async fn leave(&self, topic: &str, key: &str) -> Result<LeaveOutcome, BackendError> {
        let scripts::LeaveReply(outcome) = self.invoke("leave", self.leave_call(topic, key)).await?;
        Ok(outcome)
    }

    async fn apply(
        &self,
        topic: &str,
        epoch: Option<&str>,
        terms: HoldTerms,
        changes: &[HoldChange<'_>],
    ) -> Result<Vec<HoldOutcome>, BackendError> {
        let mut outcomes = Vec::with_capacity(changes.len());
        // Bounded batches keep each round trip well inside the timeout.
        for batch in changes.chunks(512) {
            let mut pipe = redis::pipe();
            for change in batch {
                pipe.invoke_script(&match *change {
                    HoldChange::Assert { key, data } => self.join_call(topic, key, data, epoch, terms),
                    HoldChange::Release { key } => self.leave_call(topic, key),
                });
            }
            let replies: Vec<redis::Value> = self.pipeline("apply", &pipe).await?;
            for (change, reply) in batch.iter().zip(replies) {
                let parsed = match change {
                    HoldChange::Assert { .. } => {
                        scripts::JoinReply::from_redis_value(reply).map(|r| HoldOutcome::Asserted(r.0))
                    }
                    HoldChange::Release { .. } => {
                        scripts::LeaveReply::from_redis_value(reply).map(|r| HoldOutcome::Released(r.0))
                    }
                };
                outcomes.push(parsed.map_err(|e| BackendError::Protocol { op: "apply", reason: e.to_string() })?);
            }
        }
        Ok(outcomes)
    }

    async fn snapshot(&self, topic: &str, seen: u64) -> Result<Snapshot, BackendError> {
        let k = self.keys(topic);
        let mut call = scripts::SNAPSHOT.prepare_invoke();
        call.key(&k.users).key(&k.refs).key(&k.inst).key(&k.seq).key(&k.epoch);
        call.arg(&k.channel).arg(&k.held_prefix).arg(backstop(Duration::from_secs(60)).as_millis() as u64).arg(seen);
        let scripts::SnapshotReply(snapshot) = self.invoke("snapshot", call).await?;
        Ok(snapshot)
    }

    async fn count(&self, topic: &str) -> Result<u64, BackendError> {
        let k = self.keys(topic);
        let mut call = scripts::COUNT.prepare_invoke();
        call.key(&k.users).key(&k.refs).key(&k.inst).key(&k.seq);
        call.arg(&k.channel).arg(&k.held_prefix);
        self.invoke("count", call).await
    }

    async fn tick(&self, topics: &[TickTopic], ttl: Duration) -> Result<Vec<TickReport>, BackendError> {
        let mut reports = Vec::with_capacity(topics.len());
        let keep = self.backstop_due(ttl).map_or(0, |keep| keep.as_millis() as u64);
        // Bounded batches keep each round trip well inside the timeout.
        for batch in topics.chunks(512) {
            let local_now = self.local_now_ms();
            let mut pipe = redis::pipe();
            for item in batch {
                let k = self.keys(&item.topic);
                let mut call = scripts::TICK.prepare_invoke();
                call.key(&k.users).key(&k.refs).key(&k.inst).key(k.held(&self.instance));
                call.key(&k.seq).key(&k.epoch);
                call.arg(&self.instance).arg(ttl.as_millis() as u64).arg(keep);
                call.arg(item.epoch.as_deref().unwrap_or("")).arg(&k.channel).arg(item.held);
                call.arg(&k.held_prefix).arg(local_now);
                pipe.invoke_script(&call);
            }
            let replies: Vec<scripts::TickReply> = self.pipeline("tick", &pipe).await?;
            if let Some(scripts::TickReply(_, redis_now)) = replies.first() {
                self.note_skew(*redis_now, local_now);
            }
            reports.extend(replies.into_iter().map(|scripts::TickReply(report, _)| report));
        }
        Ok(reports)
    }

    async fn clear(&self) -> Result<(), BackendError> {
        // Find every topic under the prefix (in a cluster: run per node).
        let mut conn = self.conn.clone();
        let mut topics = HashSet::new();
        let mut cursor: u64 = 0;
        let pattern = format!("{}:{{*", self.prefix);
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let (next, found): (u64, Vec<String>) = self.bounded("clear", scan.query_async(&mut conn)).await?;
            topics.extend(found.iter().filter_map(|key| keys::topic_of_key(&self.prefix, key)).map(str::to_owned));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // Topics that are only observed have no keys, but their channels have
        // subscribers: their observers must hear the clear too.
        let mut channels = redis::cmd("PUBSUB");
        channels.arg("CHANNELS").arg(format!("{}:{{*", self.prefix));
        let watched: Vec<String> = self.bounded("clear", channels.query_async(&mut conn)).await?;
        topics.extend(watched.iter().filter_map(|c| keys::topic_of_channel(&self.prefix, c)).map(str::to_owned));
        let epoch = super::new_instance_id();
        let keep = backstop(Duration::from_secs(3600)).as_millis() as u64;
        let topics: Vec<String> = topics.into_iter().collect();
        for batch in topics.chunks(256) {
            let mut pipe = redis::pipe();
            for topic in batch {
                let k = self.keys(topic);
                let mut call = scripts::CLEAR.prepare_invoke();
                call.key(&k.users).key(&k.refs).key(&k.inst).key(&k.seq).key(&k.epoch);
                call.arg(&self.instance).arg(&epoch).arg(keep).arg(&k.channel).arg(&k.held_prefix);
                pipe.invoke_script(&call);
            }
            let _: Vec<i64> = self.pipeline("clear", &pipe).await?;
        }
        Ok(())
    }

    async fn watch(&self, topic: &str) -> Result<(), BackendError> {
        let (ack, done) = oneshot::channel();
        self.subscriber
            .commands
            .send(Command::Watch(self.keys(topic).channel, ack))
            .map_err(|_| BackendError::Closed)?;
        match tokio::time::timeout(self.timeout * 2, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BackendError::Closed),
            Err(_) => Err(BackendError::Timeout { op: "subscribe", after: self.timeout * 2 }),
        }
    }

    fn unwatch(&self, topic: &str) {
        let _ = self.subscriber.commands.send(Command::Unwatch(self.keys(topic).channel));
    }

    fn events(&self) -> Option<mpsc::UnboundedReceiver<BackendEvent>> {
        self.events.lock().unwrap().take()
    }

    fn shutdown(&self) {
        self.subscriber.stop();
    }

    fn degraded(&self) -> Option<String> {
        (!self.subscriber.is_connected()).then(|| "the Redis subscriber is reconnecting".to_owned())
    }
}
