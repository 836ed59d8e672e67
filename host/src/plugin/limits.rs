//! Every limit a guest runs under, in one place: wall-clock deadlines (epoch
//! interruption, plus a timeout that also covers time inside host calls),
//! memory and table caps per instance, a cap on instances alive at once (so
//! the total memory plugins can take is bounded), a budget of host calls and
//! log lines per call, and size caps on what crosses the boundary. Also the
//! epoch ticker that drives deadlines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Engine, ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// How long one epoch tick is: the granularity of every deadline.
pub const TICK: Duration = Duration::from_millis(1);

/// What one plugin may use: deadlines, memory, tables, instances, host
/// calls, log lines and string sizes. Past any of them a call traps or is
/// refused, naming the limit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline of `authenticate`, `authorize` and `select` calls, host calls included.
    pub call_deadline: Duration,
    /// Deadline of `on-subscribe`/`on-unsubscribe`/`on-close`, which usually
    /// perform presence operations (Redis round trips).
    pub hook_deadline: Duration,
    /// Setting up a fresh instance (outside any call's deadline).
    pub instantiate_deadline: Duration,
    /// Linear memory of one instance.
    pub memory_bytes: usize,
    /// Elements of one table (growing past it traps, naming the limit).
    pub table_elements: usize,
    /// Instances alive at once, busy or idle, over every plugin version:
    /// plugins take at most `max_instances × memory_bytes` of memory. A call
    /// that finds none free waits for one within its deadline. Hooks (which
    /// hold their instance while the engine asks `select` of another) may
    /// run on at most [`Limits::hook_instances`] of them at once, so
    /// `select`, `authorize` and `authenticate` always find one.
    pub max_instances: usize,
    /// Host calls (presence, kv, log, clock) one guest call may make.
    pub host_calls_per_call: u32,
    /// Log lines one guest call may emit (stdout/stderr included); the rest
    /// are counted and dropped.
    pub log_lines_per_call: u32,
    /// Largest string a guest may pass or return (JSON data, user data).
    pub max_string_bytes: usize,
    /// Longest topic or event name a guest may pass to `publish`/`send`.
    pub max_name_bytes: usize,
    /// Idle instances kept for reuse (at most `max_instances`).
    pub max_idle_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_deadline: Duration::from_millis(10),
            hook_deadline: Duration::from_secs(3),
            instantiate_deadline: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            max_instances: 32,
            host_calls_per_call: 256,
            log_lines_per_call: 32,
            max_string_bytes: 1 << 20,
            max_name_bytes: 1024,
            max_idle_instances: 32,
        }
    }
}

impl Limits {
    /// Core instances, tables and memories one plugin instance may create
    /// (a component is several core instances; ours need 1–2 memories).
    pub const CORE_INSTANCES: usize = 16;
    /// Tables one plugin instance may create.
    pub const TABLES: usize = 64;
    /// Memories one plugin instance may create.
    pub const MEMORIES: usize = 4;

    /// How many hook calls may run at once: all instances but a quarter
    /// (at least one) kept for the calls a hook waits on.
    pub fn hook_instances(&self) -> usize {
        self.max_instances - (self.max_instances / 4).max(1)
    }

    /// The caps of one store: growing past them traps, creating past them
    /// fails the instantiation.
    pub fn store_limits(&self) -> GuestLimits {
        let caps = StoreLimitsBuilder::new()
            .memory_size(self.memory_bytes)
            .table_elements(self.table_elements)
            .instances(Self::CORE_INSTANCES)
            .tables(Self::TABLES)
            .memories(Self::MEMORIES)
            .trap_on_grow_failure(true)
            .build();
        GuestLimits { caps, largest_memory: 0, retire_above: self.memory_bytes / 4 * 3 }
    }

    /// Every limit must make sense; zero deadlines or budgets are mistakes.
    pub fn validate(&self) -> Result<(), String> {
        let durations = [
            ("call_deadline", self.call_deadline),
            ("hook_deadline", self.hook_deadline),
            ("instantiate_deadline", self.instantiate_deadline),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("plugin {name} must be longer than zero"));
        }
        let sizes = [
            ("memory_bytes", self.memory_bytes),
            ("table_elements", self.table_elements),
            ("max_instances", self.max_instances),
            ("max_string_bytes", self.max_string_bytes),
            ("max_name_bytes", self.max_name_bytes),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("plugin {name} must be at least 1"));
        }
        if self.max_instances < 2 {
            return Err(format!(
                "plugin max_instances is {}; use at least 2 (a hook's join asks `select` of a second instance)",
                self.max_instances
            ));
        }
        if self.memory_bytes < 1 << 20 {
            return Err(format!("plugin memory_bytes is {}; a guest needs at least 1 MiB", self.memory_bytes));
        }
        Ok(())
    }
}

/// Advances the engine's epoch every [`TICK`] on its own thread. Stops when
/// dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .expect("spawn epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One store's caps ([`StoreLimits`]), remembering the largest linear memory
/// they granted: an instance past three quarters of its cap is retired after
/// its call instead of going back to the pool. A garbage-collected guest
/// (JavaScript, Python) grows its heap and never gives memory back, so
/// without this it would reach the cap in the middle of some later call.
pub struct GuestLimits {
    caps: StoreLimits,
    largest_memory: usize,
    retire_above: usize,
}

impl GuestLimits {
    /// Should the instance be replaced rather than reused?
    pub fn worn_out(&self) -> bool {
        self.largest_memory > self.retire_above
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let granted = self.caps.memory_growing(current, desired, maximum)?;
        if granted {
            self.largest_memory = self.largest_memory.max(desired);
        }
        Ok(granted)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.caps.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.caps.instances()
    }

    fn tables(&self) -> usize {
        self.caps.tables()
    }

    fn memories(&self) -> usize {
        self.caps.memories()
    }
}
