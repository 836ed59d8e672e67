//! `presenced`: the presence server on its own.
//!
//! Run with: `cargo run -p presence --bin presenced` (in-memory, demo page at
//! http://127.0.0.1:8080/), or with `--redis redis://127.0.0.1:6379/` to
//! share presence with other instances. `presenced --help` lists every flag;
//! each has an environment-variable twin, and nonsense values (a zero
//! interval, an empty budget) are refused at startup. SIGHUP reloads the
//! plugin now (and does nothing without one); SIGTERM/SIGINT stop gracefully.
//!
//! Without a plugin the query string is the user's identity: a demo default,
//! so presenced refuses it on a non-loopback address unless told
//! `--insecure-demo-auth`.

use clap::Parser;
use presence::backend::redis::connection::redact;
use presence::backend::redis::RedisOptions;
use presence::plugin::kv::Quota;
use presence::plugin::{Limits, PluginConfig};
use presence::server::admission::AllowedOrigins;
use presence::server::{PresenceServer, ServerConfig, ServerLimits};
use presence::Options;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// glibc's allocator spent about a sixth of the server's CPU in `bench server`
/// (arena locks, consolidating freed frames); the library leaves the choice
/// to the application that embeds it, the binary makes it here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Who is online in each topic, across every instance: a WebSocket server
/// speaking the svelte-adapter-uws protocol, with WebAssembly policy plugins.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "PRESENCE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Redis shared by every instance; without it, presence lives in this
    /// process only. `redis://[user:password@]host:port/db`, `rediss://` for
    /// TLS; a Redis Cluster by several seed URLs separated by commas, or by
    /// any one of its nodes (found out at startup).
    #[arg(long, env = "PRESENCE_REDIS")]
    redis: Option<String>,
    /// PEM file of the CA(s) to trust for `rediss://` (a managed service's
    /// or your own private CA). It replaces the system's roots: list every
    /// CA the server's certificate may chain to.
    #[arg(long, env = "PRESENCE_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "PRESENCE_PREFIX", default_value = "presence")]
    prefix: String,
    /// Bound on every Redis call, in milliseconds.
    #[arg(long, env = "PRESENCE_REDIS_TIMEOUT_MS", default_value_t = 2000, value_parser = at_least_one())]
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
    #[arg(long, env = "PRESENCE_PLUGIN_DEADLINE_MS", default_value_t = 10, value_parser = at_least_one())]
    plugin_deadline_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    #[arg(long, env = "PRESENCE_PLUGIN_MEMORY_MB", default_value_t = 64, value_parser = at_least_one())]
    plugin_memory_mb: u64,
    /// Plugin instances alive at once (together they take at most this many
    /// times the memory cap).
    #[arg(long, env = "PRESENCE_PLUGIN_INSTANCES", default_value_t = 32, value_parser = at_least_one())]
    plugin_instances: u64,
    /// Keys the plugin may keep in its key-value store.
    #[arg(long, env = "PRESENCE_PLUGIN_KV_KEYS", default_value_t = 10_000, value_parser = at_least_one())]
    plugin_kv_keys: u64,
    /// Bytes (keys and values) the plugin may keep in its key-value store, in MiB.
    #[arg(long, env = "PRESENCE_PLUGIN_KV_MB", default_value_t = 16, value_parser = at_least_one())]
    plugin_kv_mb: u64,
    /// Hold refresh and sweep interval, in milliseconds.
    #[arg(long, env = "PRESENCE_HEARTBEAT_MS", default_value_t = 30_000, value_parser = at_least_one())]
    heartbeat_ms: u64,
    /// How long a crashed instance's users stay listed, in seconds (more than the heartbeat).
    #[arg(long, env = "PRESENCE_TTL_S", default_value_t = 90, value_parser = at_least_one())]
    ttl_s: u64,
    /// User-data field that identifies a user across tabs.
    #[arg(long, env = "PRESENCE_KEY", default_value = "id")]
    key: String,
    /// Users one topic may list, over every instance (0: no cap).
    #[arg(long, env = "PRESENCE_MAX_MEMBERS_PER_TOPIC", default_value_t = 10_000)]
    max_members_per_topic: u64,
    /// Bytes of one user's public data (as JSON).
    #[arg(long, env = "PRESENCE_MAX_DATA_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(2..))]
    max_data_bytes: u64,
    /// Bytes of one user key.
    #[arg(long, env = "PRESENCE_MAX_KEY_BYTES", default_value_t = 256, value_parser = at_least_one())]
    max_key_bytes: u64,
    /// Topics one connection may join or observe.
    #[arg(long, env = "PRESENCE_MAX_TOPICS_PER_CONNECTION", default_value_t = 256, value_parser = at_least_one())]
    max_topics_per_connection: u64,
    /// Topics this instance may serve at once.
    #[arg(long, env = "PRESENCE_MAX_TOPICS", default_value_t = 100_000, value_parser = at_least_one())]
    max_topics: u64,
    /// Count-only topics: `PREFIX=N` makes topics starting with PREFIX show
    /// only their member count once they list more than N users (repeat the
    /// flag, or separate rules with commas; the longest prefix wins).
    #[arg(long, env = "PRESENCE_COUNT_ONLY", value_delimiter = ',', value_parser = count_rule)]
    count_only: Vec<(String, u64)>,
    /// At most one `count` event per count-only topic per this many milliseconds.
    #[arg(long, env = "PRESENCE_COUNT_WINDOW_MS", default_value_t = 1000)]
    count_window_ms: u64,
    /// Largest client frame, in bytes.
    #[arg(long, env = "PRESENCE_MAX_FRAME_BYTES", default_value_t = 16 * 1024, value_parser = at_least_one())]
    max_frame_bytes: u64,
    /// Subscriptions one connection may hold.
    #[arg(long, env = "PRESENCE_MAX_SUBSCRIPTIONS", default_value_t = 100, value_parser = at_least_one())]
    max_subscriptions: u64,
    /// Client frames per second per connection.
    #[arg(long, env = "PRESENCE_MESSAGES_PER_SECOND", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    messages_per_second: u32,
    /// Bytes of outgoing frames queued per connection before a slow client is dropped.
    #[arg(long, env = "PRESENCE_SEND_QUEUE_BYTES", default_value_t = 1 << 20, value_parser = at_least_one())]
    send_queue_bytes: u64,
    /// Open WebSocket connections in total (more are refused with 503).
    #[arg(long, env = "PRESENCE_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = at_least_one())]
    max_connections: u64,
    /// Open WebSocket connections from one client address (more are refused with 503).
    #[arg(long, env = "PRESENCE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256, value_parser = at_least_one())]
    max_connections_per_address: u64,
    /// How long a client may take to send its HTTP request headers, in milliseconds.
    #[arg(long, env = "PRESENCE_HEADER_READ_TIMEOUT_MS", default_value_t = 5_000, value_parser = at_least_one())]
    header_read_timeout_ms: u64,
    /// Browser origins allowed to open a socket, comma-separated
    /// (`https://app.example.com`), or `*`. Default: this server's own host
    /// and loopback pages. Clients without an `Origin` header are allowed.
    #[arg(long, env = "PRESENCE_ALLOWED_ORIGINS", default_value = "", value_parser = AllowedOrigins::parse)]
    allowed_origins: AllowedOrigins,
    /// Allow the query-string demo identity (no plugin) on a non-loopback address.
    #[arg(long, env = "PRESENCE_INSECURE_DEMO_AUTH")]
    insecure_demo_auth: bool,
    /// Keepalive ping interval, in seconds.
    #[arg(long, env = "PRESENCE_PING_INTERVAL_S", default_value_t = 20, value_parser = at_least_one())]
    ping_interval_s: u64,
    /// A client silent this long after a ping is closed (and leaves), in
    /// seconds; also the bound on every socket write.
    #[arg(long, env = "PRESENCE_PONG_TIMEOUT_S", default_value_t = 10, value_parser = at_least_one())]
    pong_timeout_s: u64,
    /// Presence changes collected into one `presence_diff` for current
    /// clients, in milliseconds (0: as soon as possible).
    #[arg(long, env = "PRESENCE_DIFF_WINDOW_MS", default_value_t = 5)]
    diff_window_ms: u64,
    /// File holding a key (32+ bytes) for auth-preflight session cookies;
    /// give every instance the same files. Repeat (or separate with commas)
    /// to rotate: the first signs, every one verifies. The file must not be
    /// readable by other users. Default: a random key per process.
    #[arg(long, env = "PRESENCE_SESSION_KEY_FILE", value_delimiter = ',')]
    session_key_file: Vec<PathBuf>,
    /// Session cookies only over HTTPS (`Secure`); set it when a TLS proxy
    /// fronts presenced (a proxy's `X-Forwarded-Proto: https` sets it too).
    #[arg(long, env = "PRESENCE_COOKIE_SECURE")]
    cookie_secure: bool,
    /// Plugin hooks in flight at once for the connections of one client address.
    #[arg(long, env = "PRESENCE_HOOKS_PER_ADDRESS", default_value_t = 8, value_parser = at_least_one())]
    hooks_per_address: u64,
    /// HTTP connections not yet upgraded from one client address (more are refused with 503).
    #[arg(long, env = "PRESENCE_MAX_PENDING_PER_ADDRESS", default_value_t = 16, value_parser = at_least_one())]
    max_pending_per_address: u64,
    /// Threads running connections and presence. Default: one per core; fewer
    /// when other busy processes share the cores (each idle-to-busy handoff
    /// between threads is a context switch).
    #[arg(long, env = "PRESENCE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
}

/// Counts, sizes and intervals: zero is never meant.
fn at_least_one() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..)
}

impl Cli {
    /// The query-string identity is a demo default: anyone can claim any
    /// user. Fine on loopback; refused elsewhere unless asked for.
    fn check_demo_auth(&self) -> anyhow::Result<()> {
        if self.plugin.is_none() && !self.listen.ip().is_loopback() && !self.insecure_demo_auth {
            anyhow::bail!(
                "without --plugin, the query string is the user's identity (a demo default: anyone can claim \
                 to be anyone). Refusing to serve it on {}, which is not a loopback address. Give a plugin \
                 that authenticates (--plugin), listen on 127.0.0.1, or pass --insecure-demo-auth if you \
                 really mean it.",
                self.listen
            );
        }
        Ok(())
    }

    fn config(&self) -> anyhow::Result<ServerConfig> {
        let session_keys = self.session_key_file.iter().map(|path| read_secret(path)).collect::<Result<_, _>>()?;
        let tls_ca = match &self.redis_ca_file {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| anyhow::anyhow!("--redis-ca-file {}: {e}", path.display()))?)
            }
            None => None,
        };
        let redis = self.redis.as_ref().map(|url| RedisOptions {
            url: url.clone(),
            tls_ca,
            prefix: self.prefix.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            ..RedisOptions::new(url.clone())
        });
        let plugin = self.plugin.as_ref().map(|path| PluginConfig {
            path: path.clone(),
            cache_dir: self.plugin_cache.clone(),
            limits: Limits {
                call_deadline: Duration::from_millis(self.plugin_deadline_ms),
                memory_bytes: (self.plugin_memory_mb as usize) << 20,
                max_instances: self.plugin_instances as usize,
                max_idle_instances: self.plugin_instances as usize,
                ..Limits::default()
            },
            watch: self.plugin_watch,
            log_lines_per_second: 200,
            kv_quota: Quota { max_keys: self.plugin_kv_keys as usize, max_bytes: (self.plugin_kv_mb as usize) << 20 },
        });
        Ok(ServerConfig {
            redis,
            plugin,
            session_keys,
            cookie_secure: self.cookie_secure,
            insecure_demo_auth: self.insecure_demo_auth,
            options: Options {
                key: self.key.clone(),
                heartbeat: Duration::from_millis(self.heartbeat_ms),
                ttl: Duration::from_secs(self.ttl_s),
                max_members_per_topic: self.max_members_per_topic,
                max_data_bytes: self.max_data_bytes as usize,
                max_key_bytes: self.max_key_bytes as usize,
                max_topics_per_connection: self.max_topics_per_connection as usize,
                max_topics_per_instance: self.max_topics as usize,
                count_only: self.count_only.iter().cloned().collect(),
                count_window: Duration::from_millis(self.count_window_ms),
                ..Options::default()
            },
            limits: ServerLimits {
                max_frame_bytes: self.max_frame_bytes as usize,
                max_subscriptions: self.max_subscriptions as usize,
                messages_per_second: self.messages_per_second,
                send_queue_bytes: self.send_queue_bytes as usize,
                ping_interval: Duration::from_secs(self.ping_interval_s),
                pong_timeout: Duration::from_secs(self.pong_timeout_s),
                diff_window: Duration::from_millis(self.diff_window_ms),
                max_connections: self.max_connections as usize,
                max_connections_per_address: self.max_connections_per_address as usize,
                header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                allowed_origins: self.allowed_origins.clone(),
                hooks_per_address: self.hooks_per_address as usize,
                max_pending_per_address: self.max_pending_per_address as usize,
                ..ServerLimits::default()
            },
        })
    }
}

/// A key file's bytes; refused when other users may read it (a key anyone
/// on the machine can read signs anyone's session).
fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("session key file {}: {e}", path.display()))?;
    let mode = mode.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "session key file {} is readable by other users (mode {:o}); `chmod 600` it",
            path.display(),
            mode & 0o777
        );
    }
    std::fs::read(path).map_err(|e| anyhow::anyhow!("session key file {}: {e}", path.display()))
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    cli.check_demo_auth()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        runtime.worker_threads(threads.into());
    }
    runtime.enable_all().build()?.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let server = PresenceServer::start(cli.config()?).await?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cli.listen))?;
    let address = listener.local_addr()?;
    // Never the password: URLs may carry one.
    let backend = cli.redis.as_deref().map_or("in-memory (this process only)".into(), redact);
    let plugin = cli.plugin.as_ref().map_or("none (query-string demo auth)".into(), |p| p.display().to_string());
    tracing::info!(%address, backend, plugin, "presenced ready");
    println!("presenced: demo page at http://{address}/  (WebSocket at ws://{address}/ws)");
    // SIGHUP: the explicit reload (besides the file watcher); without a
    // plugin there is nothing to reload, and the signal must not kill us.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let plugin = server.plugin().cloned();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(plugin) = &plugin else {
                tracing::info!("SIGHUP: no plugin is configured; nothing to reload");
                continue;
            };
            match plugin.reload().await {
                Ok(generation) => tracing::info!(generation, "plugin reloaded on SIGHUP"),
                Err(e) => {
                    tracing::warn!(error = %e, "plugin reload on SIGHUP rejected; the previous version keeps serving")
                }
            }
        }
    });
    server
        .serve(listener, async {
            stop_signal().await;
            tracing::info!("stopping: leaving every local user, closing sockets");
        })
        .await;
    Ok(())
}

/// One `--count-only` rule: `PREFIX=N`.
fn count_rule(rule: &str) -> Result<(String, u64), String> {
    let (prefix, above) = rule.rsplit_once('=').ok_or_else(|| format!("{rule:?} is not PREFIX=N"))?;
    let above = above.parse().map_err(|_| format!("{above:?} in {rule:?} is not a number of users"))?;
    Ok((prefix.to_owned(), above))
}
