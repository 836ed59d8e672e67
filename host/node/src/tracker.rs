//! One tracker: the presence engine of one Node instance, created at once
//! (`createPresence` is synchronous) and started on first use (the backend is
//! reached lazily, as the extension reaches Redis), with its optional plugin.
//!
//! Every method takes the facade's connection id and, where the engine may
//! need it, the connection's user data as JSON text; the facade turns `ws`
//! objects into ids. Errors reach JavaScript as `Error`s whose message says
//! what was wrong; a join or sync kept because the backend does not answer
//! is not one (it is made, and the connection listed, once it does).

use crate::platform::{NodePlatform, Wake};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use presence::backend::memory;
use presence::backend::redis::{RedisBackend, RedisOptions};
use presence::plugin::kv::{MemoryKv, PluginKv, RedisKv};
use presence::plugin::{Action, PluginConfig, PluginHost, PolicyError};
use presence::{Backend, ConnId, Options, Presence};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// An in-memory store several trackers can share: each is an instance, as
/// processes on one Redis are.
#[napi]
pub struct MemoryStore {
    store: memory::MemoryStore,
}

#[napi]
impl MemoryStore {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { store: memory::MemoryStore::new() }
    }
}

/// What the facade configures (validated there, named as the extension's
/// options are).
#[napi(object)]
pub struct TrackerConfig {
    /// User-data field that identifies a user across tabs.
    pub key: String,
    /// Milliseconds between heartbeats.
    pub heartbeat_ms: f64,
    /// Seconds a user outlives a silent instance.
    pub ttl_s: f64,
    /// Redis (or cluster seeds) to share presence through; none: memory.
    pub redis_url: Option<String>,
    /// First part of every Redis key and channel.
    pub prefix: Option<String>,
    /// Bound on every Redis call, in milliseconds.
    pub redis_timeout_ms: Option<f64>,
    /// A policy plugin (a `.wasm` component), hot-reloaded.
    pub plugin: Option<String>,
    /// Users one topic may list (0: no cap).
    pub max_members_per_topic: Option<f64>,
}

/// The engine once started, and the plugin it uses.
struct Started {
    presence: Presence,
    plugin: Option<Arc<PluginHost>>,
}

/// One tracker (one instance), as `createPresence` makes it.
#[napi]
pub struct Tracker {
    config: Arc<Config>,
    platform: Arc<NodePlatform>,
    started: Arc<OnceCell<Started>>,
}

/// The configuration, made once.
struct Config {
    options: Options,
    store: Option<memory::MemoryStore>,
    redis: Option<RedisOptions>,
    plugin: Option<String>,
}

fn failed(error: impl std::fmt::Display) -> Error {
    Error::new(Status::GenericFailure, error.to_string())
}

/// A join or sync the backend could not take now is kept: done, for JavaScript.
fn kept(result: std::result::Result<(), presence::Error>) -> Result<()> {
    match result {
        Ok(()) | Err(presence::Error::Deferred(_)) => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

fn user_data(json: &str) -> Result<serde_json::Value> {
    serde_json::from_str(json).map_err(|e| failed(format!("the user data is not JSON: {e}")))
}

#[napi]
impl Tracker {
    /// A tracker on `store` (or its own), waking the facade through `wake`.
    #[napi(constructor)]
    pub fn new(config: TrackerConfig, store: Option<&MemoryStore>, wake: Function<(), ()>) -> Result<Self> {
        let wake: Wake = wake.build_threadsafe_function().weak::<true>().build()?;
        let options = Options {
            key: config.key,
            heartbeat: Duration::from_millis(config.heartbeat_ms as u64),
            ttl: Duration::from_secs_f64(config.ttl_s),
            max_members_per_topic: config
                .max_members_per_topic
                .map_or(Options::default().max_members_per_topic, |n| n as u64),
            ..Options::default()
        };
        options.validate().map_err(failed)?;
        let redis = config.redis_url.map(|url| {
            let mut redis = RedisOptions::new(url);
            if let Some(prefix) = config.prefix {
                redis.prefix = prefix;
            }
            if let Some(ms) = config.redis_timeout_ms {
                redis.timeout = Duration::from_millis(ms as u64);
            }
            redis
        });
        let store = store.map(|s| s.store.clone()).or_else(|| redis.is_none().then(memory::MemoryStore::new));
        Ok(Self {
            config: Arc::new(Config { options, store, redis, plugin: config.plugin }),
            platform: Arc::new(NodePlatform::new(wake)),
            started: Arc::default(),
        })
    }

    /// The engine, started on first use.
    async fn engine(&self) -> Result<&Started> {
        let (config, platform) = (self.config.clone(), self.platform.clone());
        self.started.get_or_try_init(|| start(config, platform)).await
    }

    /// Joins made together: `batch` is a JSON array of `[conn, user data,
    /// topic, public data or null]`, each as [`Tracker::join_one`] makes it,
    /// all at once. The facade gathers the joins of one tick into one
    /// batch, so a busy server crosses into Rust once per tick rather than
    /// once per join. Resolves to nothing when every join was made, else to
    /// a JSON array holding each join's error message (or null).
    #[napi]
    pub async fn join_batch(&self, batch: String) -> Result<Option<String>> {
        type Entry<'a> = (u32, &'a RawValue, String, Option<&'a RawValue>);
        let entries: Vec<Entry> = serde_json::from_str(&batch)
            .map_err(|e| failed(format!("a join batch is not what the facade sends: {e}")))?;
        let started = self.engine().await?;
        let joins = entries.into_iter().map(|(conn, user, topic, public)| async move {
            self.join_one(started, ConnId::new(conn.into()), user.get(), &topic, public.map(|p| p.get().to_owned()))
                .await
        });
        let results = futures::future::join_all(joins).await;
        if results.iter().all(Result::is_ok) {
            return Ok(None);
        }
        let errors: Vec<Option<String>> = results.into_iter().map(|r| r.err().map(|e| e.reason.clone())).collect();
        Ok(Some(serde_json::to_string(&errors).map_err(failed)?))
    }

    /// Join `conn` (with this user data, JSON) to `topic`; `public` is the
    /// public data the facade's own `select` made (JSON), else the engine's
    /// (or the plugin's) `select` runs. A plugin's `authorize` is asked
    /// first.
    async fn join_one(
        &self,
        started: &Started,
        conn: ConnId,
        user: &str,
        topic: &str,
        public: Option<String>,
    ) -> Result<()> {
        self.platform.register(conn, user_data(user)?);
        if let Some(plugin) = &started.plugin {
            authorized(plugin.authorize(conn, user, topic, Action::Subscribe).await)?;
        }
        kept(match public {
            Some(public) => started.presence.join_with_data(conn, topic, public).await,
            None => started.presence.join(conn, topic).await,
        })
    }

    /// Leave one topic, or every topic (then the connection is forgotten).
    #[napi]
    pub async fn leave(&self, conn: u32, topic: Option<String>) -> Result<()> {
        let Some(started) = self.started.get() else { return Ok(()) };
        let conn = ConnId::new(conn.into());
        let result = match topic {
            Some(topic) => started.presence.leave(conn, &topic).await,
            None => {
                let left = started.presence.leave_all(conn).await;
                self.platform.forget(conn);
                left
            }
        };
        // The engine released locally; a backend error means the heartbeat
        // finishes the release.
        result.or_else(|e| match e {
            presence::Error::Backend(_) => Ok(()),
            other => Err(failed(other)),
        })
    }

    /// Watch `topic` without joining.
    #[napi]
    pub async fn sync(&self, conn: u32, user: String, topic: String) -> Result<()> {
        let started = self.engine().await?;
        let conn = ConnId::new(conn.into());
        self.platform.register(conn, user_data(&user)?);
        if let Some(plugin) = &started.plugin {
            authorized(plugin.authorize(conn, user.as_str(), &topic, Action::Observe).await)?;
        }
        kept(started.presence.sync(conn, &topic).await)
    }

    /// Stop watching `topic`.
    #[napi]
    pub fn unsync(&self, conn: u32, topic: String) {
        if let Some(started) = self.started.get() {
            started.presence.unsync(ConnId::new(conn.into()), &topic);
        }
    }

    /// The subscribe hook: with a plugin, its `authorize` then its
    /// `on-subscribe` (by default the built-in routing); without, the
    /// built-in hook (`__presence:T` syncs `T`, other `__` topics are
    /// ignored, any other topic joins).
    #[napi]
    pub async fn hook_subscribe(&self, conn: u32, user: String, topic: String) -> Result<()> {
        let started = self.engine().await?;
        let conn = ConnId::new(conn.into());
        self.platform.register(conn, user_data(&user)?);
        match &started.plugin {
            Some(plugin) => {
                let (subject, action) = match topic.strip_prefix(presence::engine::PRESENCE_PREFIX) {
                    Some(watched) => (watched, Action::Observe),
                    None => (topic.as_str(), Action::Subscribe),
                };
                authorized(plugin.authorize(conn, user.as_str(), subject, action).await)?;
                authorized(plugin.on_subscribe(conn, user.as_str(), &topic).await)
            }
            None => kept(started.presence.hooks().subscribe(conn, &topic).await),
        }
    }

    /// The unsubscribe hook (the plugin's `on-unsubscribe`, or built-in).
    #[napi]
    pub async fn hook_unsubscribe(&self, conn: u32, user: String, topic: String) -> Result<()> {
        let Some(started) = self.started.get() else { return Ok(()) };
        let conn = ConnId::new(conn.into());
        match &started.plugin {
            Some(plugin) => authorized(plugin.on_unsubscribe(conn, user.as_str(), &topic).await),
            None => started.presence.hooks().unsubscribe(conn, &topic).await.map_err(failed),
        }
    }

    /// The close hook: the plugin's `on-close`, then every topic is left
    /// whatever it did (a closed connection never lingers).
    #[napi]
    pub async fn hook_close(&self, conn: u32, user: String) -> Result<()> {
        let Some(started) = self.started.get() else { return Ok(()) };
        let id = ConnId::new(conn.into());
        let hooked = match &started.plugin {
            Some(plugin) => authorized(plugin.on_close(id, user.as_str()).await),
            None => Ok(()),
        };
        self.leave(conn, None).await?;
        hooked
    }

    /// The topic's members: `[key, data JSON]` pairs.
    #[napi]
    pub async fn list(&self, topic: String) -> Result<Vec<Vec<String>>> {
        let started = self.engine().await?;
        let members = started.presence.list(&topic).await.map_err(failed)?;
        Ok(members.into_iter().map(|m| vec![m.key, m.data.to_string()]).collect())
    }

    /// Unique users on the topic.
    #[napi]
    pub async fn count(&self, topic: String) -> Result<f64> {
        let started = self.engine().await?;
        Ok(started.presence.count(&topic).await.map_err(failed)? as f64)
    }

    /// Wipe all presence state, in the backend and on every instance.
    #[napi]
    pub async fn clear(&self) -> Result<()> {
        self.engine().await?.presence.clear().await.map_err(failed)
    }

    /// Stop the heartbeat and the subscriber (holds expire after `ttl`).
    #[napi]
    pub fn destroy(&self) {
        if let Some(started) = self.started.get() {
            started.presence.destroy();
        }
    }

    /// Every event queued for the facade, in order: a JSON array, or
    /// nothing when there is none.
    #[napi]
    pub fn drain(&self) -> Option<String> {
        self.platform.drain()
    }

    /// `[users shown over local topics, last heartbeat in ms, connections]`.
    #[napi]
    pub fn local_metrics(&self) -> Vec<f64> {
        let connections = self.platform.connections() as f64;
        match self.started.get() {
            Some(s) => {
                vec![s.presence.local_users() as f64, s.presence.last_heartbeat().as_secs_f64() * 1000.0, connections]
            }
            None => vec![0.0, 0.0, connections],
        }
    }

    /// Which version of the plugin serves (0: none, or not started yet).
    #[napi]
    pub fn plugin_generation(&self) -> f64 {
        self.started.get().and_then(|s| s.plugin.as_ref()).map_or(0.0, |p| p.generation() as f64)
    }
}

/// A plugin call's verdict, as JavaScript sees it: a denial rejects with the
/// plugin's reason.
fn authorized(verdict: std::result::Result<(), PolicyError>) -> Result<()> {
    verdict.map_err(|e| match e {
        PolicyError::Denied(reason) => failed(format!("denied: {reason}")),
        other => failed(other),
    })
}

async fn start(config: Arc<Config>, platform: Arc<NodePlatform>) -> Result<Started> {
    let (backend, kv): (Arc<dyn Backend>, Arc<dyn PluginKv>) = match (&config.redis, &config.store) {
        (Some(redis), _) => {
            let backend = RedisBackend::connect(redis.clone()).await.map_err(failed)?;
            let kv = RedisKv::connect(redis, Default::default()).await.map_err(failed)?;
            (Arc::new(backend), Arc::new(kv))
        }
        (None, store) => {
            let store = store.clone().unwrap_or_default();
            (Arc::new(store.backend()), Arc::new(MemoryKv::default()))
        }
    };
    let plugin = match &config.plugin {
        Some(path) => {
            let mut plugin = PluginConfig::new(path);
            plugin.watch = true;
            Some(Arc::new(PluginHost::start(plugin, kv).await.map_err(|e| failed(format!("plugin {path}: {e}")))?))
        }
        None => None,
    };
    let mut builder = Presence::builder(backend, platform).options(config.options.clone());
    if let Some(plugin) = &plugin {
        builder = builder.policy(plugin.as_ref());
    }
    let presence = builder.build().map_err(failed)?;
    Ok(Started { presence, plugin })
}
