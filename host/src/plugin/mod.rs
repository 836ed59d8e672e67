//! The plugin platform: policy written as sandboxed WebAssembly components
//! (the `plugin` world in `wit/`), hot-reloaded without a restart.
//!
//! - `bindings`: the one `bindgen!`; `host`: the imports the host
//!   provides; `state`: a store's data (deny-by-default WASI, budgets).
//! - `limits`: deadlines, memory cap, budgets, the epoch ticker.
//! - `loader`: bytes → checked component; `cache`: precompiled artifacts,
//!   trusted only when authenticated as the host's own; `incremental`:
//!   compiled functions reused by the next version's compile.
//! - `runtime`: calls on pooled instances under deadlines.
//! - `reload`: watch the file, swap versions atomically.
//! - [`kv`]: the plugin key-value store; [`metrics`]: per-export counters.
//!
//! Failure policy: `authenticate`/`authorize` fail closed (deny), `select`
//! fails the join with a clear error and no side effect, hooks report errors
//! to the caller. A trap never takes the host down.

mod bindings;
mod cache;
mod host;
mod incremental;
pub mod kv;
mod limits;
mod loader;
pub mod metrics;
mod reload;
mod runtime;
mod state;

pub use bindings::{Action, Connection, Denial, Pair, UpgradeRequest};
pub use limits::Limits;
pub use loader::LoadError;
pub use runtime::CallError;

use crate::engine::{ConnId, SelectFn};
use crate::Presence;
use arc_swap::ArcSwapOption;
use runtime::{Call, Loaded, Reply};
use serde_json::Value;
use state::{GuestState, HostEnv, LogLimiter};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

/// Where the plugin is and how it runs.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The component (`.wasm`).
    pub path: PathBuf,
    /// Host-owned directory for precompiled artifacts (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// What one call and one instance may use.
    pub limits: Limits,
    /// Reload when the file changes.
    pub watch: bool,
    /// Plugin log lines per second, all instances together.
    pub log_lines_per_second: u64,
    /// What the plugin may keep in its key-value store.
    pub kv_quota: kv::Quota,
}

impl PluginConfig {
    /// The plugin at `path`, with default limits, watched, without a cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_dir: None,
            limits: Limits::default(),
            watch: false,
            log_lines_per_second: 200,
            kv_quota: kv::Quota::default(),
        }
    }
}

pub(crate) struct Shared {
    /// Failures logged ([`PluginHost::log_failure`]).
    failures: LogLimiter,
    engine: Engine,
    linker: Linker<GuestState>,
    env: Arc<HostEnv>,
    config: PluginConfig,
    cache: Option<Arc<cache::Cache>>,
    functions: Arc<incremental::FunctionCache>,
    current: ArcSwapOption<Loaded>,
    generations: AtomicU64,
    /// One reload at a time; the digest of the last bytes refused (they
    /// are not compiled again).
    reloading: tokio::sync::Mutex<Option<String>>,
    _ticker: limits::EpochTicker,
}

/// A loaded plugin and everything needed to call it and replace it.
///
/// ```no_run
/// use presence::plugin::{kv::MemoryKv, Action, PluginConfig, PluginHost};
/// use presence::ConnId;
/// use std::sync::Arc;
///
/// # async fn policy() -> anyhow::Result<()> {
/// let plugin = PluginHost::start(PluginConfig::new("policy.wasm"), Arc::new(MemoryKv::default())).await?;
/// let user = serde_json::json!({"id": "ada", "role": "guest"});
/// if let Err(denied) = plugin.authorize(ConnId::new(1), &user, "admin:room", Action::Subscribe).await {
///     println!("denied: {denied}");
/// }
/// plugin.reload().await?; // what a file change or SIGHUP does
/// # Ok(())
/// # }
/// ```
pub struct PluginHost {
    shared: Arc<Shared>,
    watcher: Mutex<Option<reload::FileWatcher>>,
}

/// Failures of plugin calls logged per second, over every call: a guest
/// that fails on purpose (or a client that makes it) cannot flood the log.
const FAILURES_LOGGED_PER_SECOND: u64 = 20;

fn engine(functions: Arc<incremental::FunctionCache>) -> Result<Engine, LoadError> {
    let mut config = Config::new();
    config.epoch_interruption(true).wasm_component_model(true);
    // A new version compiles only the functions that changed.
    config.enable_incremental_compilation(functions).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    // Bounded guest stack: runaway recursion traps instead of exhausting the host.
    config.max_wasm_stack(1 << 20);
    // Compilation runs on one thread (wasmtime's `parallel-compilation`
    // feature is off): a reload must leave the other cores to the calls being
    // served (on 2 cores, parallel compilation starved them past their
    // deadlines).
    Engine::new(&config).map_err(|e| LoadError::Compile(format!("cannot configure wasmtime: {e:#}")))
}

impl PluginHost {
    /// Load the plugin (failing with a plain-words [`LoadError`]) and, if
    /// configured, start watching its file.
    pub async fn start(config: PluginConfig, kv: Arc<dyn kv::PluginKv>) -> Result<Self, LoadError> {
        config.limits.validate().map_err(LoadError::Config)?;
        let metrics = Arc::new(metrics::PluginMetrics::default());
        let cache = match &config.cache_dir {
            Some(dir) => Some(Arc::new(cache::Cache::open(dir, metrics.clone())?)),
            None => None,
        };
        let functions = Arc::new(incremental::FunctionCache::new(cache.clone()));
        let engine = engine(functions.clone())?;
        let mut linker = Linker::new(&engine);
        let link = |e: wasmtime::Error| LoadError::World(format!("cannot link host imports: {e:#}"));
        // WASI with an empty context: guests that import it instantiate, and get nothing.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state).map_err(link)?;
        let env = Arc::new(HostEnv {
            presence: Default::default(),
            kv,
            limits: config.limits.clone(),
            metrics,
            log: LogLimiter::new(config.log_lines_per_second),
            instances: Arc::new(tokio::sync::Semaphore::new(config.limits.max_instances)),
            hooks: Arc::new(tokio::sync::Semaphore::new(config.limits.hook_instances())),
        });
        let shared = Arc::new(Shared {
            failures: LogLimiter::new(FAILURES_LOGGED_PER_SECOND),
            _ticker: limits::EpochTicker::start(&engine),
            engine,
            linker,
            env,
            config,
            cache,
            functions,
            current: ArcSwapOption::empty(),
            generations: AtomicU64::new(0),
            reloading: tokio::sync::Mutex::new(None),
        });
        shared.reload().await?;
        let host = Self { shared, watcher: Mutex::new(None) };
        if host.shared.config.watch {
            host.watch()
                .map_err(|e| LoadError::Read { path: host.shared.config.path.clone(), reason: e.to_string() })?;
        }
        Ok(host)
    }

    fn watch(&self) -> notify::Result<()> {
        let watcher = reload::watch(Arc::downgrade(&self.shared), &self.shared.config.path)?;
        *self.watcher.lock().unwrap() = Some(watcher);
        Ok(())
    }

    /// Load the file again now. On error the current version keeps serving.
    pub async fn reload(&self) -> Result<u64, LoadError> {
        self.shared.reload().await
    }

    /// Which version serves new calls (1 = the first loaded).
    pub fn generation(&self) -> u64 {
        self.shared.current_generation()
    }

    /// sha256 of the component that serves new calls.
    pub fn digest(&self) -> Option<String> {
        self.shared.current.load().as_ref().map(|loaded| loaded.digest.clone())
    }

    /// Its counters and latencies.
    pub fn metrics(&self) -> &metrics::PluginMetrics {
        &self.shared.env.metrics
    }

    /// Plugin instances alive now, busy or idle (at most `max_instances`).
    pub fn instances_alive(&self) -> usize {
        self.shared.config.limits.max_instances - self.shared.env.instances.available_permits()
    }

    /// Every plugin metric, in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        self.metrics().render(out);
        crate::metrics::type_line(out, "presence_plugin_instances", "gauge");
        let _ = std::fmt::Write::write_fmt(out, format_args!("presence_plugin_instances {}\n", self.instances_alive()));
    }

    /// The cost of a fresh instance: instantiate the current version once.
    #[doc(hidden)]
    pub async fn instantiate_once(&self) -> Result<std::time::Duration, CallError> {
        self.shared.instantiate_once().await
    }

    /// Put `n` fresh instances of the current version in the idle pool (at
    /// most `max_idle_instances`), each having served a `select` of
    /// `user_data`: what the bench measures memory per live instance with.
    #[doc(hidden)]
    pub async fn fill_pool(&self, n: usize, user_data: &Value) -> Result<(), CallError> {
        let loaded = self.shared.current.load_full().ok_or(CallError::NoPlugin)?;
        loaded.fill(&self.shared.engine, &self.shared.env, n, &user_data.to_string()).await
    }

    /// The plugin's `select`, for [`crate::Options::select`].
    pub fn select_fn(&self) -> SelectFn {
        let shared = self.shared.clone();
        Arc::new(move |user_data: Value| {
            let shared = shared.clone();
            Box::pin(async move { shared.select(user_data).await })
        })
    }

    /// Upgrade request → user data, or a denial. Fails closed: a plugin that
    /// traps, times out or returns something unusable denies with 503. The
    /// client is not authenticated yet, so it gets a generic reason; what
    /// went wrong (trap text included) is logged here.
    pub async fn authenticate(&self, request: UpgradeRequest) -> Result<Value, Denial> {
        let unavailable = |what: String| {
            self.log_failure("plugin authenticate failed; upgrade refused", None, None, &what);
            Denial { status: 503, reason: "authentication unavailable".into() }
        };
        match self.shared.call(Call::Authenticate(request)).await {
            Ok(Reply::Authenticate(Ok(json))) => {
                if json.len() > self.shared.config.limits.max_string_bytes {
                    return Err(unavailable(format!("authenticate returned {} bytes of user data", json.len())));
                }
                serde_json::from_str(&json).map_err(|e| unavailable(format!("authenticate returned invalid JSON: {e}")))
            }
            Ok(Reply::Authenticate(Err(denial))) if !(400..=599).contains(&denial.status) => {
                Err(unavailable(format!("authenticate denied with status {}, which is not 4xx/5xx", denial.status)))
            }
            Ok(Reply::Authenticate(Err(mut denial))) => {
                denial.reason = single_line(&denial.reason, 256);
                Err(denial)
            }
            Ok(_) => Err(unavailable("unexpected reply".into())),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// May the connection do this? Fails closed: a plugin that traps or
    /// times out refuses with [`PolicyError::Failed`].
    pub async fn authorize(
        &self,
        conn: ConnId,
        user_data: &(impl UserDataJson + ?Sized),
        topic: &str,
        action: Action,
    ) -> Result<(), PolicyError> {
        self.unit(Call::Authorize(connection(conn, user_data), topic.to_owned(), action)).await
    }

    /// Log a plugin call's failure (`what`, for `conn` on `topic`): its text
    /// (which a guest may shape: a trap message, an error string) becomes one
    /// escaped line of at most 512 bytes, and at most
    /// [`FAILURES_LOGGED_PER_SECOND`] such lines a second are logged (the
    /// rest are counted as dropped log lines).
    pub fn log_failure(
        &self,
        what: &'static str,
        conn: Option<ConnId>,
        topic: Option<&str>,
        error: &dyn std::fmt::Display,
    ) {
        if !self.shared.failures.admit() {
            self.shared.env.metrics.dropped_log_lines.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let error = single_line(&error.to_string(), 512);
        let topic = topic.map(|t| single_line(t, 128));
        tracing::warn!(conn = conn.map(|c| c.get()), topic, error, "{what}");
    }

    /// The guest's `on-subscribe` hook (the built-in subscribe by default).
    pub async fn on_subscribe(
        &self,
        conn: ConnId,
        user_data: &(impl UserDataJson + ?Sized),
        topic: &str,
    ) -> Result<(), PolicyError> {
        self.unit(Call::OnSubscribe(connection(conn, user_data), topic.to_owned())).await
    }

    /// The guest's `on-unsubscribe` hook.
    pub async fn on_unsubscribe(
        &self,
        conn: ConnId,
        user_data: &(impl UserDataJson + ?Sized),
        topic: &str,
    ) -> Result<(), PolicyError> {
        self.unit(Call::OnUnsubscribe(connection(conn, user_data), topic.to_owned())).await
    }

    /// The guest's `on-close` hook.
    pub async fn on_close(&self, conn: ConnId, user_data: &(impl UserDataJson + ?Sized)) -> Result<(), PolicyError> {
        self.unit(Call::OnClose(connection(conn, user_data))).await
    }

    async fn unit(&self, call: Call) -> Result<(), PolicyError> {
        match self.shared.call(call).await? {
            Reply::Unit(result) => result.map_err(PolicyError::Denied),
            _ => Err(PolicyError::InvalidOutput("a reply of another export".into())),
        }
    }
}

/// Why a plugin call (`authorize` or a hook) did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy said no; its reason (an upper-case word reaches current
    /// clients as their denial reason; an engine refusal a hook passes on,
    /// such as `TOPIC_FULL: …`, keeps its word).
    #[error("{0}")]
    Denied(String),
    /// The plugin failed (trapped, timed out, stayed busy, none loaded):
    /// refused, closed.
    #[error("policy unavailable: {0}")]
    Failed(#[from] CallError),
    /// The plugin answered something the host cannot use.
    #[error("policy unavailable: unusable reply: {0}")]
    InvalidOutput(String),
}

/// Text a guest produced, made safe for one log line or one close reason:
/// control characters (newlines included) escaped, cut to `max` bytes.
pub(crate) fn single_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let piece: String = if c.is_control() { c.escape_default().collect() } else { c.to_string() };
        if out.len() + piece.len() > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// A connection's user data as a plugin call receives it: JSON text. A
/// [`Value`] is serialized; text the host already holds (the hub keeps
/// user data serialized) is passed as it is.
pub trait UserDataJson {
    /// The user data as JSON text.
    fn json(&self) -> String;
}

impl UserDataJson for Value {
    fn json(&self) -> String {
        self.to_string()
    }
}

impl UserDataJson for str {
    fn json(&self) -> String {
        self.to_owned()
    }
}

fn connection(id: ConnId, user_data: &(impl UserDataJson + ?Sized)) -> Connection {
    Connection { id: id.get(), user_data: user_data.json() }
}

impl Shared {
    async fn call(&self, call: Call) -> Result<Reply, CallError> {
        let loaded = self.current.load_full().ok_or(CallError::NoPlugin)?;
        loaded.call(&self.engine, &self.env, call).await
    }

    async fn select(&self, user_data: Value) -> Result<Value, String> {
        match self.call(Call::Select(user_data.to_string())).await {
            Ok(Reply::Select(Ok(json))) => {
                if json.len() > self.config.limits.max_string_bytes {
                    return Err(format!("plugin select returned {} bytes", json.len()));
                }
                serde_json::from_str(&json).map_err(|e| format!("plugin select returned invalid JSON: {e}"))
            }
            Ok(Reply::Select(Err(message))) => Err(message),
            Ok(_) => Err("unexpected reply".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn instantiate_once(&self) -> Result<std::time::Duration, CallError> {
        let loaded = self.current.load_full().ok_or(CallError::NoPlugin)?;
        let started = std::time::Instant::now();
        let fresh = Loaded::new(loaded.generation, loaded.digest.clone(), loaded.pre_clone());
        fresh.call(&self.engine, &self.env, Call::Select("{}".into())).await?;
        Ok(started.elapsed())
    }

    /// The version serving new calls (0: none).
    fn current_generation(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |loaded| loaded.generation)
    }

    /// Read, prepare (off the async workers), smoke-test, swap. Counted: a
    /// version swapped in is a reload, one refused a rejection; bytes already
    /// serving, or already refused, are neither.
    async fn reload(self: &Arc<Self>) -> Result<u64, LoadError> {
        let mut refused = self.reloading.lock().await;
        let before = self.current_generation();
        let result = self.prepare_next(&mut refused).await;
        match &result {
            Ok(generation) if *generation != before => {
                self.env.metrics.generation.store(*generation, Ordering::Relaxed);
                self.env.metrics.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) | Err(LoadError::AlreadyRejected) => {}
            Err(_) => runtime::rejected(&self.env.metrics),
        }
        result
    }

    async fn prepare_next(self: &Arc<Self>, refused: &mut Option<String>) -> Result<u64, LoadError> {
        let path = self.config.path.clone();
        let bytes = tokio::fs::read(&path).await.map_err(|e| LoadError::Read { path, reason: e.to_string() })?;
        let digest = {
            use sha2::Digest;
            format!("{:x}", sha2::Sha256::digest(&bytes))
        };
        if let Some(current) = self.current.load().as_ref().filter(|current| current.digest == digest) {
            return Ok(current.generation); // same bytes: nothing to do
        }
        if refused.as_ref() == Some(&digest) {
            return Err(LoadError::AlreadyRejected);
        }
        let outcome = self.prepare(bytes).await;
        *refused = outcome.is_err().then_some(digest);
        outcome
    }

    async fn prepare(self: &Arc<Self>, bytes: Vec<u8>) -> Result<u64, LoadError> {
        let this = self.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            loader::prepare(&this.engine, &this.linker, &bytes, this.cache.as_deref())
        })
        .await
        .map_err(|e| LoadError::Compile(format!("compiler task failed: {e}")))?;
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(refused) => {
                // What the compile added to the function cache is still worth keeping.
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.functions.compiled()).await;
                return Err(refused);
            }
        };
        let generation = self.generations.load(Ordering::Relaxed) + 1;
        let candidate = Arc::new(Loaded::new(generation, prepared.digest, prepared.pre));
        // Smoke call: the new version must at least answer `select` in time.
        let smoke = candidate.call(&self.engine, &self.env, Call::Select(r#"{"id":"smoke-test"}"#.into())).await;
        if smoke.is_ok() {
            self.generations.store(generation, Ordering::Relaxed);
            self.current.store(Some(candidate));
        }
        // Serving (or refused): now the artifacts may take their time.
        if let Some(unsaved) = prepared.unsaved {
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || unsaved.save(this.cache.as_deref(), &this.functions)).await;
        }
        smoke.map_err(|e| LoadError::Smoke(e.to_string()))?;
        Ok(generation)
    }
}

/// The plugin as an engine's policy: its `select`, and its presence imports
/// acting on the engine ([`crate::Presence::builder`] wires both).
impl crate::engine::Policy for PluginHost {
    fn select(&self) -> SelectFn {
        self.select_fn()
    }

    fn attach(&self, presence: &Presence) {
        if self.shared.env.presence.set(presence.downgrade()).is_err() {
            tracing::warn!("plugin: already attached to an engine; it keeps acting on the first one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::single_line;

    #[test]
    fn guest_text_becomes_one_bounded_line() {
        assert_eq!(single_line("fine", 100), "fine");
        assert_eq!(
            single_line("forged\n2026-01-01 ERROR admin logged in\r", 100),
            "forged\\n2026-01-01 ERROR admin logged in\\r"
        );
        assert_eq!(single_line("bell\u{7}", 100), "bell\\u{7}");
        let cut = single_line(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 + '…'.len_utf8() && cut.ends_with('…'), "{cut}");
    }
}
