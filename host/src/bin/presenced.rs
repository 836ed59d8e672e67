//! `presenced`: the presence server on its own.
//!
//! Run with: `cargo run -p presence --bin presenced` (in-memory, demo page at
//! http://127.0.0.1:8080/), or with `--redis redis://127.0.0.1:6379/` to
//! share presence with other instances. `presenced --help` lists every flag;
//! each has an environment-variable twin. SIGHUP reloads the plugin now;
//! SIGTERM/SIGINT stop gracefully.

use axum::serve::ListenerExt;
use clap::Parser;
use presence::backend::redis::RedisOptions;
use presence::plugin::{Limits, PluginConfig};
use presence::server::{PresenceServer, ServerConfig, ServerLimits};
use presence::Options;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Who is online in each topic, across every instance: a WebSocket server
/// speaking the svelte-adapter-uws protocol, with WebAssembly policy plugins.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "PRESENCE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Redis URL shared by every instance; without it, presence lives in this process only.
    #[arg(long, env = "PRESENCE_REDIS")]
    redis: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "PRESENCE_PREFIX", default_value = "presence")]
    prefix: String,
    /// Bound on every Redis call, in milliseconds.
    #[arg(long, env = "PRESENCE_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    redis_timeout_ms: u64,
    /// Policy plugin: a WebAssembly component for the `presence:plugin` world.
    #[arg(long, env = "PRESENCE_PLUGIN")]
    plugin: Option<PathBuf>,
    /// Reload the plugin when its file changes.
    #[arg(long, env = "PRESENCE_PLUGIN_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    plugin_watch: bool,
    /// Directory for precompiled plugins (owned by this host; native code is loaded from it).
    #[arg(long, env = "PRESENCE_PLUGIN_CACHE")]
    plugin_cache: Option<PathBuf>,
    /// Deadline of authenticate/authorize/select plugin calls, in milliseconds.
    #[arg(long, env = "PRESENCE_PLUGIN_DEADLINE_MS", default_value_t = 10)]
    plugin_deadline_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    #[arg(long, env = "PRESENCE_PLUGIN_MEMORY_MB", default_value_t = 64)]
    plugin_memory_mb: usize,
    /// Hold refresh and sweep interval, in milliseconds.
    #[arg(long, env = "PRESENCE_HEARTBEAT_MS", default_value_t = 30_000)]
    heartbeat_ms: u64,
    /// How long a crashed instance's users stay listed, in seconds.
    #[arg(long, env = "PRESENCE_TTL_S", default_value_t = 90)]
    ttl_s: u64,
    /// User-data field that identifies a user across tabs.
    #[arg(long, env = "PRESENCE_KEY", default_value = "id")]
    key: String,
    /// Largest client frame, in bytes.
    #[arg(long, env = "PRESENCE_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    max_frame_bytes: usize,
    /// Subscriptions one connection may hold.
    #[arg(long, env = "PRESENCE_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    max_subscriptions: usize,
    /// Client frames per second per connection.
    #[arg(long, env = "PRESENCE_MESSAGES_PER_SECOND", default_value_t = 50)]
    messages_per_second: u32,
    /// Outgoing frames queued per connection before a slow client is dropped.
    #[arg(long, env = "PRESENCE_SEND_QUEUE", default_value_t = 1024)]
    send_queue: usize,
    /// Keepalive ping interval, in seconds.
    #[arg(long, env = "PRESENCE_PING_INTERVAL_S", default_value_t = 20)]
    ping_interval_s: u64,
    /// A client silent this long after a ping is closed (and leaves), in seconds.
    #[arg(long, env = "PRESENCE_PONG_TIMEOUT_S", default_value_t = 10)]
    pong_timeout_s: u64,
    /// Presence changes collected into one `presence_diff` for current
    /// clients, in milliseconds (0: as soon as possible).
    #[arg(long, env = "PRESENCE_DIFF_WINDOW_MS", default_value_t = 5)]
    diff_window_ms: u64,
    /// File holding the key (32+ bytes) that signs auth-preflight session
    /// cookies; give every instance the same file. Default: a random key
    /// per process.
    #[arg(long, env = "PRESENCE_SESSION_KEY_FILE")]
    session_key_file: Option<PathBuf>,
}

impl Cli {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let session_key = match &self.session_key_file {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| anyhow::anyhow!("session key file {}: {e}", path.display()))?)
            }
            None => None,
        };
        let redis = self.redis.as_ref().map(|url| RedisOptions {
            url: url.clone(),
            prefix: self.prefix.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            ..RedisOptions::new(url.clone())
        });
        let plugin = self.plugin.as_ref().map(|path| PluginConfig {
            path: path.clone(),
            cache_dir: self.plugin_cache.clone(),
            limits: Limits {
                call_deadline: Duration::from_millis(self.plugin_deadline_ms),
                memory_bytes: self.plugin_memory_mb << 20,
                ..Limits::default()
            },
            watch: self.plugin_watch,
            log_lines_per_second: 200,
        });
        Ok(ServerConfig {
            redis,
            plugin,
            session_key,
            options: Options {
                key: self.key.clone(),
                heartbeat: Duration::from_millis(self.heartbeat_ms),
                ttl: Duration::from_secs(self.ttl_s),
                ..Options::default()
            },
            limits: ServerLimits {
                max_frame_bytes: self.max_frame_bytes,
                max_subscriptions: self.max_subscriptions,
                messages_per_second: self.messages_per_second,
                send_queue: self.send_queue,
                ping_interval: Duration::from_secs(self.ping_interval_s),
                pong_timeout: Duration::from_secs(self.pong_timeout_s),
                diff_window: Duration::from_millis(self.diff_window_ms),
                ..ServerLimits::default()
            },
        })
    }
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let server = PresenceServer::start(cli.config()?).await?;
    // Small frames must not wait for the peer's delayed ACK (Nagle).
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let address = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let backend = cli.redis.as_deref().unwrap_or("in-memory (this process only)");
    let plugin = cli.plugin.as_ref().map_or("none (query-string demo auth)".into(), |p| p.display().to_string());
    tracing::info!(%address, backend, plugin, "presenced ready");
    println!("presenced: demo page at http://{address}/  (WebSocket at ws://{address}/ws)");
    if let Some(plugin) = server.plugin().cloned() {
        // SIGHUP: the explicit reload (besides the file watcher).
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match plugin.reload().await {
                    Ok(generation) => tracing::info!(generation, "plugin reloaded on SIGHUP"),
                    Err(e) => {
                        tracing::warn!(error = %e, "plugin reload on SIGHUP rejected; the previous version keeps serving")
                    }
                }
            }
        });
    }
    let app = server.router().into_make_service_with_connect_info::<SocketAddr>();
    let stopping = server.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop_signal().await;
            tracing::info!("stopping: leaving every local user, closing sockets");
            stopping.shutdown().await;
        })
        .await?;
    Ok(())
}
