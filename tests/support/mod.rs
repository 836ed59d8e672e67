//! Test support: real `redis-server` processes on free ports (killed on drop),
//! engine instances on either backend, and recording clients that wait for
//! envelopes with deadlines instead of sleeping.

pub mod command_stats;
pub mod fleet;
pub mod guests;
pub mod model;
pub mod poll;
pub mod redis_cluster;
pub mod redis_server;
pub mod slow;
pub mod tls;

use presence::backend::memory::MemoryStore;
use presence::backend::redis::{RedisBackend, RedisOptions};
use presence::{ConnId, Hub, Options, Presence};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use redis_cluster::{shared_cluster, RedisCluster};
pub use redis_server::RedisServer;

/// How long any awaited condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Options with a fast heartbeat, for tests.
pub fn fast_options() -> Options {
    Options { heartbeat: Duration::from_millis(100), ttl: Duration::from_millis(600), ..Options::default() }
}

/// Options whose heartbeat never fires by itself: the test (or benchmark)
/// runs each tick with `Presence::tick`.
pub fn manual_ticks() -> Options {
    Options { heartbeat: Duration::from_secs(3600), ttl: Duration::from_secs(7200), ..Options::default() }
}

/// Where an engine keeps its state in a test.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis { url: String, prefix: String, timeout: Duration, clock_offset_ms: i64 },
}

impl Store {
    pub fn memory() -> Self {
        Store::Memory(MemoryStore::new())
    }

    pub fn redis(server: &RedisServer) -> Self {
        Store::Redis {
            url: server.url(),
            prefix: "presence".into(),
            timeout: Duration::from_millis(500),
            clock_offset_ms: 0,
        }
    }

    /// A store on the Redis (or cluster) at `url`, under its own prefix, so
    /// tests sharing one cluster never see each other's topics.
    pub fn redis_url(url: &str) -> Self {
        Store::Redis {
            url: url.to_owned(),
            prefix: format!("t{:08x}", rand::random::<u32>()),
            timeout: Duration::from_millis(1000),
            clock_offset_ms: 0,
        }
    }

    /// The same store with another bound on each Redis call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        if let Store::Redis { timeout: t, .. } = &mut self {
            *t = timeout;
        }
        self
    }

    /// The same store, for an instance whose clock is off by `ms`.
    pub fn with_clock_offset(mut self, ms: i64) -> Self {
        if let Store::Redis { clock_offset_ms, .. } = &mut self {
            *clock_offset_ms = ms;
        }
        self
    }

    pub async fn backend(&self) -> Arc<dyn presence::Backend> {
        match self {
            Store::Memory(store) => Arc::new(store.backend()),
            Store::Redis { .. } => Arc::new(self.redis_backend().await),
        }
    }

    /// A Redis backend of its own type (for what only it tells, like clock skew).
    pub async fn redis_backend(&self) -> RedisBackend {
        let Store::Redis { url, prefix, timeout, clock_offset_ms } = self else { panic!("not a Redis store") };
        let mut options = RedisOptions::new(url.clone());
        options.prefix = prefix.clone();
        options.timeout = *timeout;
        options.clock_offset_ms = *clock_offset_ms;
        RedisBackend::connect(options).await.expect("connect to test redis")
    }
}

/// One server instance: an engine and the hub its connections live in.
pub struct Instance {
    pub presence: Presence,
    pub hub: Arc<Hub>,
}

impl Instance {
    pub async fn start(store: &Store, options: Options) -> Self {
        Self::on(store.backend().await, options)
    }

    /// An instance on a backend made by the test.
    pub fn on(backend: Arc<dyn presence::Backend>, options: Options) -> Self {
        let hub = Hub::new();
        let presence = Presence::new(backend, hub.clone(), options).expect("valid options");
        Self { presence, hub }
    }

    /// A new connection with this user data.
    pub fn connect(&self, user_data: Value) -> Client {
        let (id, rx) = self.hub.connect(user_data, 16 << 20);
        Client { id, rx, seen: Vec::new() }
    }

    /// A connection that observes `topic` (synced, not joined).
    pub async fn watcher(&self, topic: &str) -> Client {
        let watcher = self.connect(serde_json::json!({"id": "watcher"}));
        self.presence.sync(watcher.id, topic).await.expect("sync");
        watcher
    }

    /// Close a connection the way a server does: close hook, then forget it.
    pub async fn close(&self, client: &Client) {
        self.presence.hooks().close(client.id).await.expect("close");
        self.hub.disconnect(client.id);
    }
}

/// A connection's receiving end, remembering what it received.
pub struct Client {
    pub id: ConnId,
    rx: presence::hub::Outbox,
    pub seen: Vec<Value>,
}

impl Client {
    fn pull(&mut self) {
        while let Some(frame) = self.rx.try_recv() {
            self.seen.push(serde_json::from_str(&frame).expect("frames are JSON"));
        }
    }

    /// Wait until an envelope with this event (and matching `pred`) arrives; returns it.
    pub async fn wait_for(&mut self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut checked = 0;
        loop {
            self.pull();
            for envelope in &self.seen[checked..] {
                if envelope["event"] == event && pred(&envelope["data"]) {
                    return envelope.clone();
                }
            }
            checked = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no `{event}` envelope within {DEADLINE:?}; got {:#?}", self.seen);
            }
            if let Ok(Some(frame)) = tokio::time::timeout(left, self.rx.recv()).await {
                self.seen.push(serde_json::from_str(&frame).expect("frames are JSON"));
            }
        }
    }

    /// The envelopes received so far with this event.
    pub fn events(&mut self, event: &str) -> Vec<Value> {
        self.pull();
        self.seen.iter().filter(|e| e["event"] == event).cloned().collect()
    }

    /// How many `event`s concerned user `key` so far.
    pub fn count_for(&mut self, event: &str, key: &str) -> usize {
        self.events(event).iter().filter(|e| e["data"]["key"] == key).count()
    }

    /// Replay every presence envelope of `topic` received so far, as a
    /// client store would: `list` replaces, `join`/`updated` add, `leave`
    /// removes. Returns the keys shown, or the first inconsistency: a `join`
    /// for a key already shown, a `leave` or `updated` for one not shown.
    pub fn view(&mut self, topic: &str) -> Result<std::collections::BTreeSet<String>, String> {
        self.pull();
        let presence = format!("__presence:{topic}");
        let mut shown = std::collections::BTreeSet::new();
        for envelope in self.seen.iter().filter(|e| e["topic"] == presence.as_str()) {
            let key = || envelope["data"]["key"].as_str().unwrap_or_default().to_owned();
            match envelope["event"].as_str().unwrap_or_default() {
                "list" => {
                    shown = envelope["data"]
                        .as_array()
                        .map(|m| m.iter().filter_map(|m| m["key"].as_str().map(str::to_owned)).collect())
                        .unwrap_or_default();
                }
                "join" if !shown.insert(key()) => return Err(format!("second `join` for listed {:?}", key())),
                "leave" if !shown.remove(&key()) => return Err(format!("`leave` for unlisted {:?}", key())),
                "updated" if !shown.contains(&key()) => return Err(format!("`updated` for unlisted {:?}", key())),
                _ => {}
            }
        }
        Ok(shown)
    }

    /// Keys in the latest `list` envelope.
    pub fn last_list_keys(&mut self) -> Vec<String> {
        let lists = self.events("list");
        let list = lists.last().expect("a list was received");
        let mut keys: Vec<String> =
            list["data"].as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap().to_owned()).collect();
        keys.sort();
        keys
    }
}

/// [`poll::until`] `check` is true, within [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll::until(what, DEADLINE, async || poll::when(check().await, "false")).await
}

/// One `#[tokio::test]` per seed of a seeded randomized check, each calling
/// `$check(seed).await` (which names its seed when it fails):
/// `seeded_tests!(check: seed_1 = 1, seed_2 = 2);`.
#[macro_export]
macro_rules! seeded_tests {
    ($check:ident: $($name:ident = $seed:literal),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $check($seed).await
        }
    )*};
}

/// Resident memory of this process, in KiB (from `/proc/self/status`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS line");
    line.trim().trim_end_matches(" kB").parse().expect("VmRSS in kB")
}

/// Sorted keys of `list(topic)`.
pub async fn keys(instance: &Instance, topic: &str) -> Vec<String> {
    let mut keys: Vec<String> = instance.presence.list(topic).await.expect("list").into_iter().map(|m| m.key).collect();
    keys.sort();
    keys
}

pub mod browser;
pub mod ws;

/// A token signed the way `examples/token-gate` expects (its demo secret).
pub fn sign_token(payload: Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"dev-secret-change-me").expect("any key length");
    mac.update(body.as_bytes());
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}
