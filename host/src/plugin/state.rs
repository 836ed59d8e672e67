//! What each guest instance's store holds: a deny-by-default WASI context
//! (no files, env, args, sockets or inherited stdio — stdout and stderr become
//! rate-limited log lines), its memory cap, the shared host environment its
//! imports use, and the budget of the call in progress.

use super::kv::PluginKv;
use super::limits::GuestLimits;
use super::limits::Limits;
use super::metrics::PluginMetrics;
use crate::engine::WeakPresence;
use crate::Presence;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// What every instance of every plugin version shares.
pub struct HostEnv {
    pub presence: OnceLock<WeakPresence>,
    pub kv: Arc<dyn PluginKv>,
    pub limits: Limits,
    pub metrics: Arc<PluginMetrics>,
    pub log: LogLimiter,
    /// Places for instances alive at once ([`Limits::max_instances`]).
    pub instances: Arc<tokio::sync::Semaphore>,
    /// Places for hook calls running at once ([`Limits::hook_instances`]).
    pub hooks: Arc<tokio::sync::Semaphore>,
}

impl HostEnv {
    pub fn presence(&self) -> Result<Presence, String> {
        self.presence.get().and_then(WeakPresence::upgrade).ok_or_else(|| "presence engine is not running".to_owned())
    }
}

/// A process-wide budget of plugin log lines per second (a fixed one-second
/// window), shared by `log.log` and guest stdout/stderr.
pub struct LogLimiter {
    per_second: u64,
    window: std::sync::Mutex<(Instant, u64)>,
}

impl LogLimiter {
    pub fn new(per_second: u64) -> Self {
        Self { per_second, window: std::sync::Mutex::new((Instant::now(), 0)) }
    }

    /// True if one more line may be logged now.
    pub fn admit(&self) -> bool {
        let mut window = self.window.lock().unwrap();
        if window.0.elapsed().as_secs() >= 1 {
            *window = (Instant::now(), 0);
        }
        if window.1 < self.per_second {
            window.1 += 1;
            true
        } else {
            false
        }
    }
}

/// The store data of one guest instance.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub store_limits: GuestLimits,
    pub env: Arc<HostEnv>,
    pub host_calls_left: u32,
    /// Log lines the call in progress may still emit, through `log.log` and
    /// stdout/stderr alike.
    pub log_lines: LineBudget,
    /// When the call (or instantiation) in progress must stop.
    pub deadline_at: Option<Instant>,
}

impl GuestState {
    pub fn new(env: Arc<HostEnv>) -> Self {
        let log_lines = LineBudget::default();
        log_lines.reset(env.limits.log_lines_per_call);
        let mut wasi = WasiCtx::builder();
        let output = |stream| GuestOutput { env: Arc::downgrade(&env), stream, budget: log_lines.clone() };
        wasi.stdout(output("stdout"));
        wasi.stderr(output("stderr"));
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            store_limits: env.limits.store_limits(),
            host_calls_left: env.limits.host_calls_per_call,
            log_lines,
            deadline_at: None,
            env,
        }
    }

    /// Start a new call's budget.
    pub fn reset_budget(&mut self) {
        self.host_calls_left = self.env.limits.host_calls_per_call;
        self.log_lines.reset(self.env.limits.log_lines_per_call);
    }

    /// May the call emit one more log line (its budget, then the process's
    /// rate)? Lines refused are counted.
    pub fn admit_line(&self) -> bool {
        admit_line(&self.log_lines, &self.env)
    }

    /// Count one host call; a guest over its budget is stopped (trap).
    pub fn charge(&mut self) -> wasmtime::Result<()> {
        if self.host_calls_left == 0 {
            wasmtime::bail!(
                "plugin made more than {} host calls in one call; stopped",
                self.env.limits.host_calls_per_call
            );
        }
        self.host_calls_left -= 1;
        Ok(())
    }

    /// A topic or event name the guest handed over, checked against the
    /// name limit.
    pub fn check_name(&self, what: &str, name: &str) -> Result<(), String> {
        let limit = self.env.limits.max_name_bytes;
        if name.is_empty() || name.len() > limit {
            return Err(format!("{what} must be 1..={limit} bytes, got {}", name.len()));
        }
        Ok(())
    }

    /// A string the guest handed over, checked against the size limit.
    pub fn check_len(&self, what: &str, text: &str) -> Result<(), String> {
        let limit = self.env.limits.max_string_bytes;
        if text.len() > limit {
            return Err(format!("{what} is {} bytes, over the limit of {limit}", text.len()));
        }
        Ok(())
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The log lines one call may still emit, shared by the store's `log.log`
/// import and its stdout/stderr streams.
#[derive(Clone, Default)]
pub struct LineBudget(Arc<std::sync::atomic::AtomicU32>);

impl LineBudget {
    fn reset(&self, lines: u32) {
        self.0.store(lines, Ordering::Relaxed);
    }

    /// Take one line; false when none is left.
    fn take(&self) -> bool {
        self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
    }
}

fn admit_line(budget: &LineBudget, env: &HostEnv) -> bool {
    let admitted = budget.take() && env.log.admit();
    if !admitted {
        env.metrics.dropped_log_lines.fetch_add(1, Ordering::Relaxed);
    }
    admitted
}

/// Guest stdout/stderr: each line becomes a log line (if the call's budget
/// and the rate limit admit it); writes never fail, so a chatty guest cannot
/// crash on them.
#[derive(Clone)]
struct GuestOutput {
    env: Weak<HostEnv>,
    stream: &'static str,
    budget: LineBudget,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter { output: self.clone(), line: Vec::new() })
    }
}

struct LineWriter {
    output: GuestOutput,
    line: Vec<u8>,
}

/// Longest plugin log line, in bytes; longer ones are cut.
pub const MAX_LINE: usize = 4096;

impl LineWriter {
    fn emit(&mut self) {
        let line = super::single_line(&String::from_utf8_lossy(&self.line), MAX_LINE);
        self.line.clear();
        if let Some(env) = self.output.env.upgrade() {
            if admit_line(&self.output.budget, &env) {
                tracing::info!(target: "plugin", stream = self.output.stream, "{line}");
            }
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        for &byte in buf {
            if byte == b'\n' || self.line.len() >= MAX_LINE {
                self.emit();
                if byte == b'\n' {
                    continue;
                }
            }
            self.line.push(byte);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.line.is_empty() {
            self.emit();
        }
        Poll::Ready(Ok(()))
    }
}
