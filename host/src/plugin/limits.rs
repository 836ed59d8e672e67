//! Every limit a guest runs under, in one place: wall-clock deadlines (epoch
//! interruption, plus a timeout that also covers time inside host calls), a
//! memory cap, a budget of host calls and log lines per call, and size caps
//! on what crosses the boundary. Also the epoch ticker that drives deadlines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};

/// How long one epoch tick is: the granularity of every deadline.
pub const TICK: Duration = Duration::from_millis(1);

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
    /// Host calls (presence, kv, log, clock) one guest call may make.
    pub host_calls_per_call: u32,
    /// Log lines one guest call may emit (stdout/stderr included); the rest
    /// are counted and dropped.
    pub log_lines_per_call: u32,
    /// Largest string a guest may pass or return (JSON, keys, values, topics).
    pub max_string_bytes: usize,
    /// Idle instances kept for reuse.
    pub max_idle_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_deadline: Duration::from_millis(10),
            hook_deadline: Duration::from_secs(3),
            instantiate_deadline: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            host_calls_per_call: 256,
            log_lines_per_call: 32,
            max_string_bytes: 1 << 20,
            max_idle_instances: 64,
        }
    }
}

impl Limits {
    /// The memory cap for one store: growing past it traps, naming the limit.
    pub fn store_limits(&self) -> StoreLimits {
        StoreLimitsBuilder::new()
            .memory_size(self.memory_bytes)
            .instances(16)
            .tables(64)
            .memories(4)
            .trap_on_grow_failure(true)
            .build()
    }

    /// Deadline in epoch ticks (rounded up, plus the tick in progress).
    pub fn ticks(deadline: Duration) -> u64 {
        (deadline.as_micros().div_ceil(TICK.as_micros()) as u64) + 1
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
