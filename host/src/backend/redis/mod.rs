//! The Redis backend: presence shared by every instance on one Redis (6.2+,
//! no HEXPIRE needed) or on a Redis Cluster (7.0+: every key of a topic in one
//! slot, events on the topic's shard with sharded pub/sub).
//!
//! Each operation is one Lua script (see the `.lua` files beside this module,
//! each headed by its KEYS, ARGV, reply and the property it serves), called by
//! SHA over one multiplexed connection; the heartbeat is one pipelined batch
//! of tick calls, each covering up to 100 topics (on a cluster, one batch per
//! master and one call per slot). [`connection`] says which URLs mean what.
//!
//! ## Behavior on failure
//!
//! - Every call is bounded by [`RedisOptions::timeout`]: a stalled Redis
//!   (SIGSTOP, partition) yields [`BackendError::Timeout`], a dead one
//!   [`BackendError::Unavailable`]; nothing hangs and nothing queues unbounded.
//! - The command connection reconnects in the background; the next call uses
//!   the new connection. On a cluster it also follows slot moves and a
//!   master's failover (the cluster client re-reads the topology on `MOVED`
//!   or a dead node), and a heartbeat batch that hit a moved slot is retried
//!   call by call.
//! - The subscriber reconnects by itself, subscribes its channels again and
//!   emits [`BackendEvent::Resynced`] so the engine re-reads its topics; on a
//!   cluster, only the topics whose shard moved or failed over
//!   ([`BackendEvent::TopicResynced`]).
//! - Scripts lost with a restart (NOSCRIPT) are loaded again transparently.
//! - A Redis that came back empty is noticed by the next heartbeat tick
//!   ([`super::TickOutcome::Lost`]: this instance's hold is gone, or a join
//!   re-created it and the tick counts fewer users held than the instance
//!   believes) and the engine re-asserts its users, pipelined. One that lost
//!   some writes is noticed by the topic's next verify (every few ticks).
//! - A topic whose keys are unusable (a wrong type written by something else)
//!   fails its own tick ([`super::TickOutcome::Failed`]), not its batch's.
//! - Expiries use Redis's clock (`TIME` inside the scripts). The instance's own
//!   clock is only compared with it, to warn when it is far off
//!   ([`RedisBackend::clock_skew`]).

pub mod connection;
mod keys;
pub(crate) mod scripts;
mod sharded;
mod slots;
mod subscriber;

pub use connection::{RedisConnection, Topology};
pub use keys::TopicKeys;
pub use slots::slot_of as key_slot;

use super::{
    backstop, now_ms, Backend, BackendError, BackendEvent, HoldChange, HoldOutcome, HoldTerms, JoinOutcome,
    LeaveOutcome, Snapshot, TickReport, TickTopic, TopicCounts,
};
use async_trait::async_trait;
use connection::Endpoint;
use redis::{FromRedisValue, RedisError};
use scripts::{Call, Scripts};
use slots::{Node, SlotTable};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subscriber::{Command, Subscriber};
use tokio::sync::{mpsc, oneshot};

/// How to reach Redis and name our keys.
///
/// ```no_run
/// use presence::backend::redis::{RedisBackend, RedisOptions};
/// use std::time::Duration;
///
/// # async fn connect() -> Result<(), presence::backend::BackendError> {
/// // One Redis, or a cluster by several seeds: "redis://a:7000,redis://b:7001".
/// let options = RedisOptions { timeout: Duration::from_secs(1), ..RedisOptions::new("redis://127.0.0.1:6379/") };
/// let backend = RedisBackend::connect(options).await?;
/// println!("connected to a {:?}", backend.topology());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db` (or `rediss://` for TLS,
    /// `redis+unix://`); several, separated by commas, are the seed nodes of
    /// a cluster. A single node that is part of a cluster is used as one.
    pub url: String,
    /// PEM certificate(s) to trust for `rediss://` instead of the system's
    /// roots (a private CA, as managed services and tests use): with them,
    /// only they are trusted.
    pub tls_ca: Option<Vec<u8>>,
    /// First part of every key and channel; letters, digits, `_ . : -` only.
    pub prefix: String,
    /// Bound on every Redis call (connect, command, subscribe).
    pub timeout: Duration,
    /// Tests only: pretend this instance's clock is off by this many
    /// milliseconds (what a host with a wrong clock would report).
    #[doc(hidden)]
    pub clock_offset_ms: i64,
}

impl std::fmt::Debug for RedisOptions {
    /// Without the password the URL may carry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &connection::redact(&self.url))
            .field("tls_ca", &self.tls_ca.as_ref().map(|ca| format!("{} bytes", ca.len())))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisOptions {
    /// Options for `url` with the defaults: prefix `presence`, 2 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls_ca: None,
            prefix: "presence".into(),
            timeout: Duration::from_secs(2),
            clock_offset_ms: 0,
        }
    }
}

/// How far off an instance's clock may be before it is logged: expiries do
/// not depend on it, but the plugin clock and the logs do.
const SKEW_WARNING_MS: i64 = 1000;

/// Topics per tick.lua call: enough that Redis pays the call and its clock
/// read rarely, few enough that one call blocks Redis for well under a
/// millisecond.
const TOPICS_PER_TICK_CALL: usize = 100;

/// Presence state in Redis, speaking for one instance.
pub struct RedisBackend {
    conn: RedisConnection,
    endpoint: Endpoint,
    scripts: &'static Scripts,
    /// Cluster only: which master serves which slot, for per-node batches.
    slot_table: Mutex<Option<SlotTable>>,
    /// Cluster only: batched calls that had to be retried on their own.
    retried: std::sync::atomic::AtomicU64,
    prefix: String,
    instance: String,
    timeout: Duration,
    subscriber: Subscriber,
    events: Mutex<Option<mpsc::UnboundedReceiver<BackendEvent>>>,
    clock_offset_ms: i64,
    /// This instance's clock minus Redis's, as of the last tick (ms).
    skew_ms: AtomicI64,
    /// Topics where a join created this instance's hold since the last tick:
    /// the next tick verifies them, since a hold lost with Redis's data and
    /// re-created by a join looks alive to a refresh.
    fresh_holds: Mutex<HashSet<String>>,
}

/// Run one Redis call under `timeout`, mapping its error.
pub(crate) async fn bounded<T>(
    op: &'static str,
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| map_err(op, timeout, e)),
        Err(_) => Err(BackendError::Timeout { op, after: timeout }),
    }
}

pub(crate) fn map_err(op: &'static str, timeout: Duration, e: RedisError) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout { op, after: timeout }
    } else if matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) {
        BackendError::Refused { op, cause: Arc::new(e) }
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        // A cluster between owners of a slot (failover, migration): transient.
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::ClusterConnectionNotFound
                | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown | redis::ServerErrorKind::BusyLoading)
        )
    {
        BackendError::Unavailable { op, cause: Arc::new(e) }
    } else {
        BackendError::Protocol { op, reason: e.to_string(), cause: Some(Arc::new(e)) }
    }
}

impl RedisBackend {
    /// Connect (bounded by `options.timeout`) and start the subscriber.
    pub async fn connect(options: RedisOptions) -> Result<Self, BackendError> {
        let valid = !options.prefix.is_empty()
            && options.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !valid {
            return Err(BackendError::Config(format!(
                "invalid key prefix {:?}: use letters, digits, `_`, `.`, `:` or `-`",
                options.prefix
            )));
        }
        let endpoint = Endpoint::resolve(&options).await?;
        let conn = endpoint.connect().await?;
        let sharded = endpoint.topology == Topology::Cluster;
        let scripts = Scripts::get(sharded);
        let (tx, rx) = mpsc::unbounded_channel();
        let subscriber = if sharded {
            sharded::start(endpoint.clone(), options.prefix.clone(), options.timeout, tx)?
        } else {
            Subscriber::start(endpoint.single_client()?, options.prefix.clone(), options.timeout, tx)
        };
        let backend = Self {
            conn,
            endpoint,
            scripts,
            slot_table: Mutex::new(None),
            retried: Default::default(),
            prefix: options.prefix,
            instance: super::new_instance_id(),
            timeout: options.timeout,
            subscriber,
            events: Mutex::new(Some(rx)),
            clock_offset_ms: options.clock_offset_ms,
            skew_ms: AtomicI64::new(0),
            fresh_holds: Mutex::new(HashSet::new()),
        };
        // Load every script up front (on a cluster, on every node), so
        // pipelined calls, which cannot load on demand, find them; after a
        // Redis restart `pipeline` reloads.
        if let Err(e) = backend.load_scripts("connect", None).await {
            // On a cluster with a node down, the others still work: each
            // call loads its script where it runs (`EVAL` after NOSCRIPT).
            if backend.topology() == Topology::Single {
                return Err(e);
            }
            tracing::warn!(error = %e, "redis cluster: scripts not loaded on every node; loading them on demand");
        }
        Ok(backend)
    }

    /// Where this backend's Redis is: one node or a cluster.
    pub fn topology(&self) -> Topology {
        self.endpoint.topology
    }

    /// Cluster only: how many calls of per-master batches had to be retried
    /// on their own (a moved slot, a failover, a missing script); 0 while
    /// the slot table is right.
    pub fn retried_calls(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Load every script where `key` lives (its slot's master on a
    /// cluster; `None`: on one node, or on every node of a cluster).
    async fn load_scripts(&self, op: &'static str, key: Option<&[u8]>) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        for lua in self.scripts.all() {
            let _: redis::Value = match (&mut conn, key) {
                (RedisConnection::Cluster(cluster), Some(key)) => {
                    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                    let route = Route::new(slots::slot_of(key), SlotAddr::Master);
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    self.bounded(op, cluster.route_command(lua.load(), routing)).await?
                }
                (conn, _) => self.bounded(op, lua.load().query_async(conn)).await?,
            };
        }
        Ok(())
    }

    /// This instance's clock minus Redis's, in ms, as measured by the last
    /// heartbeat (0 before the first). Presence does not depend on it.
    pub fn clock_skew(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }

    fn local_now_ms(&self) -> u64 {
        now_ms().saturating_add_signed(self.clock_offset_ms)
    }

    /// The topics `which` of a tick (indices into `topics`), in script calls
    /// of at most `TOPICS_PER_TICK_CALL`: on a cluster each call's topics
    /// share a slot.
    fn tick_batches(&self, topics: &[TickTopic], which: &[usize]) -> Vec<Vec<usize>> {
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for &i in which {
            let slot = match self.endpoint.topology {
                Topology::Single => 0,
                Topology::Cluster => keys::topic_slot(&topics[i].topic),
            };
            groups.entry(slot).or_default().push(i);
        }
        groups
            .into_values()
            .flat_map(|g| g.chunks(TOPICS_PER_TICK_CALL).map(<[usize]>::to_vec).collect::<Vec<_>>())
            .collect()
    }

    /// One round of a tick over the topics `which` (indices into `topics`),
    /// quick where nothing calls for a full tick, or all in `full`. A report
    /// per index of `topics` (`None` for those not in `which`, and for quick
    /// ones that asked for a full tick).
    async fn tick_round(
        &self,
        topics: &[TickTopic],
        which: &[usize],
        ttl: Duration,
        fresh: &HashSet<String>,
        full: bool,
    ) -> Result<Vec<Option<TickReport>>, BackendError> {
        let local_now = self.local_now_ms();
        let batches = self.tick_batches(topics, which);
        let first_topics: Vec<&str> = batches.iter().map(|b| topics[b[0]].topic.as_str()).collect();
        // A few batches a pipeline keep each round trip well inside the timeout.
        let replies = self
            .batched("tick", &first_topics, 16, |b| {
                let mut call = self.scripts.tick.call();
                call.arg(&self.instance).arg(ttl.as_millis() as u64).arg(backstop(ttl).as_millis() as u64);
                for &i in &batches[b] {
                    let item = &topics[i];
                    let verify = item.verify || fresh.contains(&item.topic);
                    let duties = [(verify, 'v'), (item.renew, 'r'), (full, 's'), (item.connections.is_some(), 'c')]
                        .into_iter()
                        .filter_map(|(due, duty)| due.then_some(duty))
                        .collect::<String>();
                    if duties.is_empty() {
                        call.key(TopicKeys::inst(&self.prefix, &item.topic)).arg(item.held).arg("");
                    } else {
                        let k = self.keys(&item.topic);
                        call.topic_keys(&k).arg(item.held).arg(duties);
                        call.arg(item.epoch.as_deref().unwrap_or("")).arg(&k.channel);
                        call.arg(item.connections.map_or(String::new(), |n| n.to_string()));
                    }
                }
                call
            })
            .await?;
        let mut reports: Vec<Option<TickReport>> = vec![None; topics.len()];
        for (batch, reply) in batches.iter().zip(replies) {
            let reply = scripts::TickReply::from_redis_value(reply)
                .map_err(|e| BackendError::protocol("tick", e.to_string()))?;
            if reply.reports.len() != batch.len() {
                let reason = format!("{} reports for {} topics", reply.reports.len(), batch.len());
                return Err(BackendError::protocol("tick", reason));
            }
            if batch[0] == 0 {
                self.note_skew(reply.redis_now, local_now);
            }
            for (&i, report) in batch.iter().zip(reply.reports) {
                reports[i] = report;
            }
        }
        Ok(reports)
    }

    /// A join created this instance's hold on `topic` (see `fresh_holds`).
    fn note_fresh_hold(&self, topic: &str) {
        self.fresh_holds.lock().unwrap_or_else(|p| p.into_inner()).insert(topic.to_owned());
    }

    fn note_skew(&self, redis_now: u64, local_now: u64) {
        let skew = local_now as i64 - redis_now as i64;
        let before = self.skew_ms.swap(skew, Ordering::Relaxed);
        if skew.abs() > SKEW_WARNING_MS && before.abs() <= SKEW_WARNING_MS {
            tracing::warn!(skew_ms = skew, "this instance's clock is off from Redis's; presence uses Redis's clock");
        }
    }

    fn join_call(&self, topic: &str, key: &str, data: &str, epoch: Option<&str>, terms: HoldTerms) -> Call {
        let k = self.keys(topic);
        let mut call = self.scripts.join.call();
        call.topic_keys(&k);
        call.arg(&self.instance).arg(key).arg(data).arg(terms.ttl.as_millis() as u64);
        call.arg(backstop(terms.ttl).as_millis() as u64).arg(epoch.unwrap_or("")).arg(&k.channel);
        call.arg(terms.max_members);
        call
    }

    fn leave_call(&self, topic: &str, key: &str) -> Call {
        let k = self.keys(topic);
        let mut call = self.scripts.leave.call();
        call.topic_keys(&k);
        // The backstop only needs to outlive the other holders' next tick.
        call.arg(&self.instance).arg(key).arg(backstop(Duration::from_secs(60)).as_millis() as u64).arg(&k.channel);
        call
    }

    /// The SHA1 of each script by operation name, for tools that call the
    /// scripts directly (the benchmark's `redis-benchmark` baseline).
    pub fn script_hashes(topology: Topology) -> [(&'static str, &'static str); 7] {
        let all = Scripts::get(topology == Topology::Cluster).all();
        std::array::from_fn(|i| (scripts::SOURCES[i].0.trim_end_matches(".lua"), all[i].script.get_hash()))
    }

    /// The multiplexed command connection (e.g. for readiness checks).
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// The bound on every Redis call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The first part of every key and channel.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self, topic: &str) -> TopicKeys {
        TopicKeys::new(&self.prefix, topic)
    }

    /// Run one Redis call under the backend's timeout, mapping its error.
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        bounded(op, self.timeout, call).await
    }

    /// Run one script call (see [`Call::invoke`]).
    async fn invoke<T: FromRedisValue>(&self, op: &'static str, call: Call) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        self.bounded(op, call.invoke(&mut conn)).await
    }

    /// Run a pipeline of script calls on the node of `key`; after a NOSCRIPT
    /// (the node restarted, or is a promoted replica), load every script
    /// there and try once more.
    async fn pipeline<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: Option<&[u8]>,
        pipe: &redis::Pipeline,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts(op, key).await?;
                self.bounded(op, pipe.query_async::<T>(&mut conn)).await
            }
            Ok(result) => result.map_err(|e| map_err(op, self.timeout, e)),
            Err(_) => Err(BackendError::Timeout { op, after: self.timeout }),
        }
    }

    /// The cluster's slot table, read once and again after a batch hit a
    /// moved slot.
    async fn slot_table(&self, op: &'static str) -> Result<SlotTable, BackendError> {
        if let Some(table) = self.slot_table.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(table);
        }
        let mut conn = self.conn.clone();
        let reply: redis::Value = self.bounded(op, redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn)).await?;
        let table = SlotTable::parse(&reply).map_err(|reason| BackendError::protocol(op, reason))?;
        *self.slot_table.lock().unwrap_or_else(|p| p.into_inner()) = Some(table.clone());
        Ok(table)
    }

    /// Script calls on many topics, batched: pipelines of `chunk` calls on
    /// one node; on a cluster, one pipeline per master at once, and any call
    /// that met a moved slot, a failover or a missing script is retried on
    /// its own through the cluster client. One reply per call, in order.
    async fn batched(
        &self,
        op: &'static str,
        topics: &[&str],
        chunk: usize,
        call: impl Fn(usize) -> Call,
    ) -> Result<Vec<redis::Value>, BackendError> {
        if self.endpoint.topology == Topology::Single {
            let mut replies = Vec::with_capacity(topics.len());
            for start in (0..topics.len()).step_by(chunk) {
                let mut pipe = redis::pipe();
                for i in start..(start + chunk).min(topics.len()) {
                    pipe.add_command(call(i).evalsha());
                }
                replies.extend(self.pipeline::<Vec<redis::Value>>(op, None, &pipe).await?);
            }
            return Ok(replies);
        }
        let table = self.slot_table(op).await?;
        let mut by_node: BTreeMap<Option<Node>, Vec<usize>> = BTreeMap::new();
        for (i, topic) in topics.iter().enumerate() {
            let node = table.node_of(keys::topic_slot(topic)).cloned();
            by_node.entry(node).or_default().push(i);
        }
        let mut replies: Vec<Option<redis::Value>> = vec![None; topics.len()];
        let mut retry = by_node.remove(&None).unwrap_or_default();
        let batches = by_node.iter().flat_map(|(node, calls)| calls.chunks(chunk).map(move |c| (node, c)));
        let sent = futures::future::join_all(batches.map(|(node, indices)| {
            let mut pipe = redis::pipe();
            for &i in indices {
                pipe.add_command(call(i).evalsha());
            }
            let mut conn = self.conn.clone();
            async move {
                let node = node.as_ref().expect("unknown nodes are retried");
                (indices, tokio::time::timeout(self.timeout, conn.pipeline_to(pipe, node)).await)
            }
        }))
        .await;
        for (indices, reply) in sent {
            match reply {
                Ok(Ok(values)) if values.len() == indices.len() => {
                    for (&i, value) in indices.iter().zip(values) {
                        match value {
                            redis::Value::ServerError(_) => retry.push(i),
                            value => replies[i] = Some(value),
                        }
                    }
                }
                _ => retry.extend_from_slice(indices),
            }
        }
        if !retry.is_empty() {
            self.retried.fetch_add(retry.len() as u64, Ordering::Relaxed);
            // The table was wrong (or a node is failing over): read it anew
            // next time, and let the cluster client route these calls.
            *self.slot_table.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let retried =
                futures::future::join_all(retry.iter().map(|&i| self.invoke::<redis::Value>(op, call(i)))).await;
            for (&i, reply) in retry.iter().zip(retried) {
                replies[i] = Some(reply?);
            }
        }
        Ok(replies.into_iter().map(|reply| reply.expect("every call answered or retried")).collect())
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
        let scripts::JoinReply(outcome, fresh_hold) =
            self.invoke("join", self.join_call(topic, key, data, epoch, terms)).await?;
        if fresh_hold {
            self.note_fresh_hold(topic);
        }
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
                pipe.add_command(
                    match *change {
                        HoldChange::Assert { key, data } => self.join_call(topic, key, data, epoch, terms),
                        HoldChange::Release { key } => self.leave_call(topic, key),
                    }
                    .evalsha(),
                );
            }
            let users_key = self.keys(topic).users;
            let replies: Vec<redis::Value> = self.pipeline("apply", Some(users_key.as_bytes()), &pipe).await?;
            for (change, reply) in batch.iter().zip(replies) {
                let parsed = match change {
                    HoldChange::Assert { .. } => scripts::JoinReply::from_redis_value(reply).map(|r| {
                        if r.1 {
                            self.note_fresh_hold(topic);
                        }
                        HoldOutcome::Asserted(r.0)
                    }),
                    HoldChange::Release { .. } => {
                        scripts::LeaveReply::from_redis_value(reply).map(|r| HoldOutcome::Released(r.0))
                    }
                };
                outcomes.push(parsed.map_err(|e| BackendError::protocol("apply", e.to_string()))?);
            }
        }
        Ok(outcomes)
    }

    async fn snapshot(&self, topic: &str, seen: u64) -> Result<Snapshot, BackendError> {
        let k = self.keys(topic);
        let mut call = self.scripts.snapshot.call();
        call.topic_keys(&k);
        call.arg(&k.channel).arg(backstop(Duration::from_secs(60)).as_millis() as u64).arg(seen);
        let scripts::SnapshotReply(snapshot) = self.invoke("snapshot", call).await?;
        Ok(snapshot)
    }

    async fn count(&self, topic: &str) -> Result<u64, BackendError> {
        let k = self.keys(topic);
        let mut call = self.scripts.count.call();
        call.topic_keys(&k);
        call.arg(&k.channel);
        self.invoke("count", call).await
    }

    async fn stats(&self, topic: &str) -> Result<TopicCounts, BackendError> {
        let k = self.keys(topic);
        let mut call = self.scripts.stats.call();
        call.topic_keys(&k).arg(&k.channel).arg(&self.instance);
        let (users, connections, own_connections) = self.invoke("stats", call).await?;
        Ok(TopicCounts { users, connections, own_connections })
    }

    async fn tick(&self, topics: &[TickTopic], ttl: Duration) -> Result<Vec<TickReport>, BackendError> {
        let fresh = std::mem::take(&mut *self.fresh_holds.lock().unwrap_or_else(|p| p.into_inner()));
        // Verified by this tick. One not ticked is new (no earlier hold to
        // lose) or forgotten; after a failed tick, every one waits for the next.
        let keep_fresh = || self.fresh_holds.lock().unwrap_or_else(|p| p.into_inner()).extend(fresh.iter().cloned());
        let all: Vec<usize> = (0..topics.len()).collect();
        let mut reports = self.tick_round(topics, &all, ttl, &fresh, false).await.inspect_err(|_| keep_fresh())?;
        // Quick topics whose hold is gone or that have an expired hold to
        // sweep, ticked in full right away.
        let again: Vec<usize> = all.into_iter().filter(|&i| reports[i].is_none()).collect();
        if !again.is_empty() {
            let mut full = self.tick_round(topics, &again, ttl, &fresh, true).await.inspect_err(|_| keep_fresh())?;
            for i in again {
                reports[i] = full[i].take();
            }
        }
        reports
            .into_iter()
            .map(|r| r.ok_or_else(|| BackendError::protocol("tick", "a full tick came back quick")))
            .collect()
    }

    async fn clear(&self) -> Result<(), BackendError> {
        // Find every topic under the prefix, on every master.
        let mut conn = self.conn.clone();
        let mut topics = HashSet::new();
        let pattern = keys::pattern(&self.prefix);
        let nodes = match self.endpoint.topology {
            Topology::Single => vec![None],
            Topology::Cluster => self.slot_table("clear").await?.masters().into_iter().map(Some).collect(),
        };
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
                let reply: redis::Value = self.bounded("clear", conn.command_to(scan, node.as_ref())).await?;
                let (next, found): (u64, Vec<String>) = FromRedisValue::from_redis_value(reply)
                    .map_err(|e| BackendError::protocol("clear", e.to_string()))?;
                topics.extend(found.iter().filter_map(|key| keys::topic_of_key(&self.prefix, key)).map(str::to_owned));
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        // Topics that are only observed have no keys, but their channels have
        // subscribers: their observers must hear the clear too.
        let mut channels = redis::cmd("PUBSUB");
        let listing = if self.endpoint.topology == Topology::Cluster { "SHARDCHANNELS" } else { "CHANNELS" };
        channels.arg(listing).arg(&pattern);
        let watched: Vec<String> = self.bounded("clear", channels.query_async(&mut conn)).await?;
        topics.extend(watched.iter().filter_map(|c| keys::topic_of_channel(&self.prefix, c)).map(str::to_owned));
        let epoch = super::new_instance_id();
        let keep = backstop(Duration::from_secs(3600)).as_millis() as u64;
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.batched("clear", &topics, 256, |i| {
            let k = self.keys(topics[i]);
            let mut call = self.scripts.clear.call();
            call.topic_keys(&k);
            call.arg(&self.instance).arg(&epoch).arg(keep).arg(&k.channel);
            call
        })
        .await?;
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
