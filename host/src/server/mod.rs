//! The WebSocket server and its HTTP side, usable two ways: `presenced`
//! runs it on its own, and an existing axum application merges
//! [`PresenceServer::router`] next to its own routes.
//!
//! - `protocol`: client messages of every generation, acks, denials.
//! - `ws`: one connection's life (authenticate → frames → hooks → close),
//!   generations, keepalive, rate and subscription limits, close codes.
//! - `session`: signed cookies of the auth preflight.
//! - `http`: `/`, `/healthz`, `/readyz`, `/metrics`, `POST`/`DELETE /__ws/auth`.
//! - [`admission`]: the `Origin` check and the connection limits.
//! - `listener`: [`PresenceServer::serve`], the TCP side (header-read
//!   timeout, a bound on connections not yet upgraded).

pub mod admission;
mod http;
mod listener;
mod metrics;
mod protocol;
mod session;
mod ws;

use crate::backend::measured::{BackendMetrics, Measured};
use crate::backend::memory::MemoryStore;
use crate::backend::redis::connection::redact;
use crate::backend::redis::{RedisBackend, RedisOptions};
use crate::plugin::kv::{MemoryKv, PluginKv, RedisKv};
use crate::plugin::{PluginConfig, PluginHost};
use crate::{Backend, Hub, Options, Presence};
use axum::routing::{get, post};
use axum::Router;
use metrics::ServerMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Per-connection protection.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest client frame; larger ones close the connection (1009).
    pub max_frame_bytes: usize,
    /// Topics one connection may be subscribed to at once.
    pub max_subscriptions: usize,
    /// Client frames per second (burst of the same size); extra frames get
    /// an error envelope and are dropped.
    pub messages_per_second: u32,
    /// Bytes of outgoing frames queued per connection; a client that lets
    /// it fill up is disconnected (1013).
    pub send_queue_bytes: usize,
    /// How often the server pings each client.
    pub ping_interval: Duration,
    /// How long after a ping a silent client is considered dead and closed;
    /// also the bound on every socket write (a client that stops reading
    /// is closed within `ping_interval + pong_timeout`).
    pub pong_timeout: Duration,
    /// Open WebSocket connections in total (and, separately, HTTP
    /// connections not yet upgraded); more are refused with 503.
    pub max_connections: usize,
    /// Open WebSocket connections from one client address.
    pub max_connections_per_address: usize,
    /// How long a client may take to send its request headers ([`PresenceServer::serve`]).
    pub header_read_timeout: Duration,
    /// Browser origins allowed to open a socket.
    pub allowed_origins: admission::AllowedOrigins,
    /// How long presence changes are collected into one `presence_diff` for
    /// current clients (0: sent as soon as the flusher runs).
    pub diff_window: Duration,
    /// How long a session cookie from the auth preflight is valid.
    pub session_ttl: Duration,
    /// Plugin hooks (subscribe, unsubscribe, close) in flight at once for
    /// the connections of one client address; more wait their turn.
    pub hooks_per_address: usize,
    /// HTTP connections not yet upgraded from one client address (more are
    /// refused with 503): one address cannot take the places of everyone
    /// else's requests, health checks included.
    pub max_pending_per_address: usize,
    /// Bytes of one connection's user data (as JSON), from the plugin's
    /// `authenticate`, a session cookie or the demo query string; more
    /// refuses the upgrade (4403).
    pub max_user_data_bytes: usize,
}

impl ServerLimits {
    /// Every limit must make sense: zero intervals and empty budgets are
    /// mistakes, named here instead of found in production.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_subscriptions", self.max_subscriptions),
            ("messages_per_second", self.messages_per_second as usize),
            ("send_queue_bytes", self.send_queue_bytes),
            ("max_connections", self.max_connections),
            ("max_connections_per_address", self.max_connections_per_address),
            ("hooks_per_address", self.hooks_per_address),
            ("max_pending_per_address", self.max_pending_per_address),
            ("max_user_data_bytes", self.max_user_data_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        let durations = [
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("session_ttl", self.session_ttl),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, value)| value.is_zero()) {
            return Err(format!("{name} must be longer than zero"));
        }
        if self.send_queue_bytes < self.max_frame_bytes {
            return Err(format!(
                "send_queue_bytes ({}) must hold at least one frame of max_frame_bytes ({})",
                self.send_queue_bytes, self.max_frame_bytes
            ));
        }
        Ok(())
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024,
            max_subscriptions: 100,
            messages_per_second: 50,
            send_queue_bytes: 1 << 20,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_address: 256,
            header_read_timeout: Duration::from_secs(5),
            allowed_origins: admission::AllowedOrigins::default(),
            diff_window: Duration::from_millis(5),
            session_ttl: Duration::from_secs(3600),
            hooks_per_address: 8,
            max_pending_per_address: 16,
            max_user_data_bytes: 64 * 1024,
        }
    }
}

/// Everything `presenced` (or an embedding application) configures.
#[derive(Clone, Default)]
pub struct ServerConfig {
    /// `None`: the in-memory backend (one process).
    pub redis: Option<RedisOptions>,
    /// `None`: the built-in behaviour, identities from the query string.
    pub plugin: Option<PluginConfig>,
    /// The engine's options.
    pub options: Options,
    /// Connection limits.
    pub limits: ServerLimits,
    /// Keys of the auth preflight's session cookies, newest first: the first
    /// signs, every one verifies (rotate by putting a new key first). Shared
    /// by every instance so a cookie works on all of them. Empty: a random
    /// key per process.
    pub session_keys: Vec<Vec<u8>>,
    /// Session cookies get `Secure` (sent over HTTPS only). They get it
    /// anyway when the preflight arrives with `X-Forwarded-Proto: https`.
    pub cookie_secure: bool,
    /// Without a plugin, the query string is the user's identity (a demo
    /// default: anyone can claim to be anyone). It is refused to clients
    /// that are not on loopback unless this is set.
    pub insecure_demo_auth: bool,
}

impl std::fmt::Debug for ServerConfig {
    /// Without secrets: the Redis URL's password and the session keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("redis", &self.redis)
            .field("plugin", &self.plugin)
            .field("options", &self.options)
            .field("limits", &self.limits)
            .field("session_keys", &format_args!("[{} redacted]", self.session_keys.len()))
            .field("cookie_secure", &self.cookie_secure)
            .field("insecure_demo_auth", &self.insecure_demo_auth)
            .finish()
    }
}

pub(crate) struct Shared {
    pub presence: Presence,
    pub hub: Arc<Hub>,
    pub plugin: Option<Arc<PluginHost>>,
    pub limits: ServerLimits,
    pub metrics: ServerMetrics,
    pub backend_metrics: Arc<BackendMetrics>,
    /// For `/readyz`: the Redis connection, when there is one.
    pub redis: Option<crate::backend::redis::RedisConnection>,
    pub shutdown: CancellationToken,
    pub connections: TaskTracker,
    pub admission: admission::Admission,
    pub hook_gate: admission::HookGate,
    pub sessions: session::Sessions,
    /// The query-string identity may serve clients off loopback.
    pub insecure_demo_auth: bool,
    /// The hub's diff flusher, stopped on shutdown.
    diffs: tokio::task::AbortHandle,
    /// Ticks every ping interval: each connection checks its keepalive.
    pub keepalive: tokio::sync::watch::Sender<()>,
    keepalive_ticker: tokio::task::AbortHandle,
}

/// Why a server did not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A limit makes no sense.
    #[error("server limits: {0}")]
    Limits(String),
    /// Redis cannot be used.
    #[error("cannot use Redis at {url}: {source}")]
    Redis {
        /// Without its password.
        url: String,
        /// What the backend reported.
        #[source]
        source: crate::backend::BackendError,
    },
    /// The plugin kv's own connection to Redis failed.
    #[error("cannot use Redis at {url} for the plugin kv: {source}")]
    PluginKv {
        /// Without its password.
        url: String,
        /// What failed.
        #[source]
        source: crate::backend::BackendError,
    },
    /// The plugin cannot be loaded.
    #[error("plugin {path}: {source}")]
    Plugin {
        /// Its file.
        path: String,
        /// Why.
        #[source]
        source: crate::plugin::LoadError,
    },
    /// The engine's options make no sense.
    #[error(transparent)]
    Options(#[from] crate::Error),
    /// The session key is too short.
    #[error("the session key has {bytes} bytes; use at least {min}")]
    SessionKey {
        /// Its length.
        bytes: usize,
        /// The least accepted.
        min: usize,
    },
}

/// Builds a [`PresenceServer`] (the same as filling a [`ServerConfig`]).
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    config: ServerConfig,
}

impl ServerBuilder {
    /// Share presence through Redis (default: in memory, one process).
    pub fn redis(mut self, redis: RedisOptions) -> Self {
        self.config.redis = Some(redis);
        self
    }

    /// Load a policy plugin, wired to the engine both ways.
    pub fn plugin(mut self, plugin: PluginConfig) -> Self {
        self.config.plugin = Some(plugin);
        self
    }

    /// Engine options (heartbeat, ttl, caps, …).
    pub fn options(mut self, options: Options) -> Self {
        self.config.options = options;
        self
    }

    /// Connection limits.
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.config.limits = limits;
        self
    }

    /// A session cookies' key, shared by every instance; the first one
    /// given signs, every one verifies.
    pub fn session_key(mut self, key: Vec<u8>) -> Self {
        self.config.session_keys.push(key);
        self
    }

    /// Connect, load, start.
    pub async fn start(self) -> Result<PresenceServer, StartError> {
        PresenceServer::start(self.config).await
    }
}

/// The engine, the plugin and the connection plumbing, ready to serve.
#[derive(Clone)]
pub struct PresenceServer {
    shared: Arc<Shared>,
}

impl PresenceServer {
    /// `PresenceServer::builder().redis(…).plugin(…).start().await`.
    ///
    /// ```
    /// use presence::server::PresenceServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), presence::server::StartError> {
    /// // In memory; add `.redis(RedisOptions::new(url))` to share presence
    /// // between instances, `.plugin(PluginConfig::new(path))` for policy.
    /// let server = PresenceServer::builder().start().await?;
    /// // An axum application adds the WebSocket endpoint to its own routes.
    /// let app: axum::Router = axum::Router::new().merge(server.ws_router());
    /// # drop(app);
    /// server.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Connect the backend, load the plugin, start the engine.
    pub async fn start(config: ServerConfig) -> Result<Self, StartError> {
        config.limits.validate().map_err(StartError::Limits)?;
        let quota = config.plugin.as_ref().map(|p| p.kv_quota).unwrap_or_default();
        let (backend, kv, redis): (Arc<dyn Backend>, Arc<dyn PluginKv>, _) = match &config.redis {
            Some(options) => {
                let url = redact(&options.url);
                let backend = RedisBackend::connect(options.clone())
                    .await
                    .map_err(|source| StartError::Redis { url: url.clone(), source })?;
                let conn = backend.connection();
                let kv = RedisKv::connect(options, quota)
                    .await
                    .map_err(|source| StartError::PluginKv { url: url.clone(), source })?;
                (Arc::new(backend), Arc::new(kv), Some(conn))
            }
            None => (Arc::new(MemoryStore::new().backend()), Arc::new(MemoryKv::new(quota)), None),
        };
        let plugin = match config.plugin {
            Some(plugin) => {
                let path = plugin.path.display().to_string();
                let host = PluginHost::start(plugin, kv).await.map_err(|source| StartError::Plugin { path, source })?;
                Some(Arc::new(host))
            }
            None => None,
        };
        let measured = Measured::new(backend);
        let backend_metrics = measured.metrics.clone();
        let hub = Hub::new();
        let diffs = tokio::spawn(hub.clone().run_diffs(config.limits.diff_window)).abort_handle();
        let mut builder = Presence::builder(Arc::new(measured), hub.clone()).options(config.options);
        if let Some(plugin) = &plugin {
            builder = builder.policy(plugin.as_ref());
        }
        let presence = builder.build()?;
        if let Some(key) = config.session_keys.iter().find(|k| k.len() < session::MIN_KEY_BYTES) {
            return Err(StartError::SessionKey { bytes: key.len(), min: session::MIN_KEY_BYTES });
        }
        let sessions = session::Sessions::new(config.session_keys, config.limits.session_ttl, config.cookie_secure);
        let admission =
            admission::Admission::new(config.limits.max_connections, config.limits.max_connections_per_address);
        let hook_gate = admission::HookGate::new(config.limits.hooks_per_address);
        let keepalive = tokio::sync::watch::Sender::new(());
        let keepalive_ticker = tokio::spawn({
            let (ticks, every) = (keepalive.clone(), config.limits.ping_interval);
            async move {
                let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    interval.tick().await;
                    ticks.send_replace(());
                }
            }
        })
        .abort_handle();
        Ok(Self {
            shared: Arc::new(Shared {
                presence,
                hub,
                plugin,
                limits: config.limits,
                metrics: ServerMetrics::default(),
                backend_metrics,
                redis,
                shutdown: CancellationToken::new(),
                connections: TaskTracker::new(),
                admission,
                hook_gate,
                sessions,
                insecure_demo_auth: config.insecure_demo_auth,
                diffs,
                keepalive,
                keepalive_ticker,
            }),
        })
    }

    /// Every route: `/ws`, `POST /__ws/auth`, the demo page at `/`,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws", get(ws::upgrade))
            .route("/__ws/auth", post(http::auth_preflight).delete(http::logout))
            .route("/", get(http::demo))
            .route("/healthz", get(http::healthz))
            .route("/readyz", get(http::readyz))
            .route("/metrics", get(http::metrics))
            .with_state(self.shared.clone())
    }

    /// Only the WebSocket endpoint at `/ws` and its auth preflight, for
    /// applications that keep their own `/` and health routes.
    pub fn ws_router<S>(&self) -> Router<S> {
        Router::new()
            .route("/ws", get(ws::upgrade))
            .route("/__ws/auth", post(http::auth_preflight).delete(http::logout))
            .with_state(self.shared.clone())
    }

    /// The engine.
    pub fn presence(&self) -> &Presence {
        &self.shared.presence
    }

    /// The connections: publish to topics, count frames, inspect subscriptions.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.shared.hub
    }

    /// The plugin, when one is configured.
    pub fn plugin(&self) -> Option<&Arc<PluginHost>> {
        self.shared.plugin.as_ref()
    }

    /// Graceful stop: refuse new connections, leave every local user (so the
    /// other instances see the leaves now, not after `ttl`), close every
    /// socket with a close frame, and wait for the connections to finish.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.shutdown.cancel();
        shared.presence.leave_everyone().await;
        shared.connections.close();
        if tokio::time::timeout(Duration::from_secs(5), shared.connections.wait()).await.is_err() {
            tracing::warn!("some connections did not close within 5 s");
        }
        shared.diffs.abort();
        shared.keepalive_ticker.abort();
        shared.presence.destroy();
    }
}
