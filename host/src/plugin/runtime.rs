//! Calling into a loaded plugin: instances are reused from a pool (a call
//! costs microseconds, not an instantiation); each call runs under its
//! deadline — epoch interruption while guest code runs (yielding to the
//! runtime every tick, trapping past the deadline), a timeout around the
//! whole call (host calls included) — and an instance that trapped or timed
//! out is thrown away, never re-entered.

use super::bindings::{guest, Plugin, PluginPre};
use super::limits::Limits;
use super::metrics::{Export, PluginMetrics};
use super::state::{GuestState, HostEnv};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

/// One call into the guest, with its arguments.
pub enum Call {
    Authenticate(guest::UpgradeRequest),
    Authorize(guest::Connection, String, guest::Action),
    Select(String),
    OnSubscribe(guest::Connection, String),
    OnUnsubscribe(guest::Connection, String),
    OnClose(guest::Connection),
}

/// What the guest answered.
pub enum Reply {
    Authenticate(Result<String, guest::Denial>),
    Unit(Result<(), String>),
    Select(Result<String, String>),
}

impl Call {
    fn export(&self) -> Export {
        match self {
            Call::Authenticate(_) => Export::Authenticate,
            Call::Authorize(..) => Export::Authorize,
            Call::Select(_) => Export::Select,
            Call::OnSubscribe(..) => Export::OnSubscribe,
            Call::OnUnsubscribe(..) => Export::OnUnsubscribe,
            Call::OnClose(_) => Export::OnClose,
        }
    }
}

/// Why a call produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No plugin is loaded.
    #[error("no plugin is loaded")]
    NoPlugin,
    /// The call ran past its deadline and was stopped.
    #[error("plugin `{export}` exceeded its {deadline:?} deadline")]
    Timeout {
        /// The export called.
        export: &'static str,
        /// Its deadline.
        deadline: std::time::Duration,
    },
    /// The guest trapped (a panic, a limit, an abused import).
    #[error("plugin `{export}` trapped: {message}")]
    Trap {
        /// The export called.
        export: &'static str,
        /// The trap.
        message: String,
    },
    /// Every instance stayed busy until the deadline.
    #[error("plugin `{export}` refused: all {limit} instances stayed busy past its {deadline:?} deadline")]
    Busy {
        /// The export called.
        export: &'static str,
        /// The instance limit.
        limit: usize,
        /// Its deadline.
        deadline: std::time::Duration,
    },
}

/// One version of the plugin, with its idle instances.
pub struct Loaded {
    pub generation: u64,
    pub digest: String,
    pre: PluginPre<GuestState>,
    idle: Mutex<Vec<Instance>>,
}

struct Instance {
    store: Store<GuestState>,
    plugin: Plugin,
    /// This instance's place among the [`Limits::max_instances`].
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Loaded {
    pub fn new(generation: u64, digest: String, pre: PluginPre<GuestState>) -> Self {
        Self { generation, digest, pre, idle: Mutex::new(Vec::new()) }
    }

    pub fn pre_clone(&self) -> PluginPre<GuestState> {
        self.pre.clone()
    }

    async fn instantiate(
        &self,
        engine: &Engine,
        env: &Arc<HostEnv>,
        place: tokio::sync::OwnedSemaphorePermit,
    ) -> wasmtime::Result<Instance> {
        let mut store = Store::new(engine, GuestState::new(env.clone()));
        store.limiter(|state| &mut state.store_limits);
        // Every epoch tick, guest code yields to the runtime (a spinning guest
        // never holds a worker thread) or, past its deadline, traps.
        store.epoch_deadline_callback(|store| {
            Ok(match store.data().deadline_at {
                Some(at) if Instant::now() >= at => UpdateDeadline::Interrupt,
                _ => UpdateDeadline::Yield(1),
            })
        });
        store.data_mut().deadline_at = Some(Instant::now() + env.limits.instantiate_deadline);
        store.set_epoch_deadline(1);
        let plugin = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance { store, plugin, _place: place })
    }

    /// A new instance. It gets its own budget, outside the call's deadline:
    /// large guests (a Python interpreter) take longer to set up than to
    /// answer a call.
    async fn fresh(
        &self,
        engine: &Engine,
        env: &Arc<HostEnv>,
        export: Export,
        place: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Instance, CallError> {
        let metrics = env.metrics.export(export);
        match tokio::time::timeout(env.limits.instantiate_deadline, self.instantiate(engine, env, place)).await {
            Ok(Ok(instance)) => Ok(instance),
            Ok(Err(error)) => {
                metrics.traps.fetch_add(1, Relaxed);
                Err(CallError::Trap { export: export.name(), message: describe(&error, &env.limits) })
            }
            Err(_) => {
                metrics.timeouts.fetch_add(1, Relaxed);
                Err(CallError::Timeout { export: export.name(), deadline: env.limits.instantiate_deadline })
            }
        }
    }

    /// Instantiate until `n` instances are idle (bounded by the pool's size
    /// and the places left), each having served one `select` of `user_data`
    /// (so its memory is what a live instance's is).
    pub async fn fill(&self, engine: &Engine, env: &Arc<HostEnv>, n: usize, user_data: &str) -> Result<(), CallError> {
        while self.idle.lock().unwrap().len() < n.min(env.limits.max_idle_instances) {
            let Ok(place) = env.instances.clone().try_acquire_owned() else { break };
            let mut instance = self.fresh(engine, env, Export::Select, place).await?;
            instance.store.data_mut().deadline_at = Some(Instant::now() + env.limits.instantiate_deadline);
            instance.store.set_epoch_deadline(1);
            invoke(&mut instance, Call::Select(user_data.to_owned()))
                .await
                .map_err(|e| CallError::Trap { export: "select", message: describe(&e, &env.limits) })?;
            self.idle.lock().unwrap().push(instance);
        }
        Ok(())
    }

    /// Run one call on a pooled (or new) instance, under the export's deadline.
    pub async fn call(&self, engine: &Engine, env: &Arc<HostEnv>, call: Call) -> Result<Reply, CallError> {
        let export = call.export();
        let metrics = env.metrics.export(export);
        let deadline = if export.is_hook() { env.limits.hook_deadline } else { env.limits.call_deadline };
        let arrived = Instant::now();
        // A hook holds its instance while the engine asks `select` of another:
        // hooks take at most their share of the instances, so that call always
        // finds one (a pool full of hooks waiting on each other is a deadlock).
        let _hook_place = match export.is_hook() {
            true => match tokio::time::timeout(deadline, env.hooks.clone().acquire_owned()).await {
                Ok(Ok(place)) => Some(place),
                _ => {
                    metrics.timeouts.fetch_add(1, Relaxed);
                    let limit = env.limits.hook_instances();
                    return Err(CallError::Busy { export: export.name(), limit, deadline });
                }
            },
            false => None,
        };
        // What is left of the deadline bounds the wait for a place, and the
        // call; a call that waited it all out found no place in time.
        let left = deadline.saturating_sub(arrived.elapsed());
        if left.is_zero() {
            metrics.timeouts.fetch_add(1, Relaxed);
            return Err(CallError::Busy { export: export.name(), limit: env.limits.hook_instances(), deadline });
        }
        let pooled = self.idle.lock().unwrap().pop();
        let mut instance = match pooled {
            Some(instance) => instance,
            None => {
                // Wait (within the call's deadline) for a place among the
                // instances allowed to exist.
                let places = env.instances.clone();
                let Ok(Ok(place)) = tokio::time::timeout(left, places.acquire_owned()).await else {
                    metrics.timeouts.fetch_add(1, Relaxed);
                    return Err(CallError::Busy { export: export.name(), limit: env.limits.max_instances, deadline });
                };
                self.fresh(engine, env, export, place).await?
            }
        };
        // A fresh instance's set-up had its own budget: the call gets what
        // was left when it started waiting.
        let started = Instant::now();
        let run = async {
            instance.store.data_mut().reset_budget();
            instance.store.data_mut().deadline_at = Some(Instant::now() + left);
            instance.store.set_epoch_deadline(1);
            let reply = invoke(&mut instance, call).await?;
            Ok::<_, wasmtime::Error>((instance, reply))
        };
        let outcome = tokio::time::timeout(left, run).await;
        metrics.observe(started.elapsed());
        match outcome {
            Ok(Ok((instance, reply))) => {
                if instance.store.data().store_limits.worn_out() {
                    env.metrics.retired_instances.fetch_add(1, Relaxed);
                } else {
                    let mut idle = self.idle.lock().unwrap();
                    if idle.len() < env.limits.max_idle_instances {
                        idle.push(instance);
                    }
                }
                if matches!(&reply, Reply::Unit(Err(_)) | Reply::Select(Err(_))) {
                    metrics.errors.fetch_add(1, Relaxed);
                }
                Ok(reply)
            }
            Ok(Err(error)) if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                metrics.timeouts.fetch_add(1, Relaxed);
                Err(CallError::Timeout { export: export.name(), deadline })
            }
            Ok(Err(error)) => {
                metrics.traps.fetch_add(1, Relaxed);
                Err(CallError::Trap { export: export.name(), message: describe(&error, &env.limits) })
            }
            Err(_) => {
                metrics.timeouts.fetch_add(1, Relaxed);
                Err(CallError::Timeout { export: export.name(), deadline })
            }
        }
    }
}

/// A trap's message, with the limit that caused it when there is one.
fn describe(error: &wasmtime::Error, limits: &Limits) -> String {
    let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
    let text = chain.join(": ");
    if text.contains("growing table") || text.contains("table growth") {
        return format!("table limit reached: at most {} elements per table ({text})", limits.table_elements);
    }
    if let Some(what) =
        ["memory", "table", "instance"].into_iter().find(|w| text.contains(&format!("{w} count too high")))
    {
        let limit = match what {
            "memory" => Limits::MEMORIES,
            "table" => Limits::TABLES,
            _ => Limits::CORE_INSTANCES,
        };
        return format!("{what} limit reached: at most {limit} {what}s per plugin instance ({text})");
    }
    if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
        return format!("memory limit reached: at most {} bytes per instance ({text})", limits.memory_bytes);
    }
    if matches!(error.downcast_ref::<Trap>(), Some(Trap::MemoryOutOfBounds) | Some(Trap::StackOverflow)) {
        return format!("{text} (runaway recursion overflows the guest's stack)");
    }
    text
}

async fn invoke(instance: &mut Instance, call: Call) -> wasmtime::Result<Reply> {
    let guest = instance.plugin.presence_plugin_guest();
    let store = &mut instance.store;
    Ok(match call {
        Call::Authenticate(request) => Reply::Authenticate(guest.call_authenticate(store, &request).await?),
        Call::Authorize(conn, topic, action) => Reply::Unit(guest.call_authorize(store, &conn, &topic, action).await?),
        Call::Select(user_data) => Reply::Select(guest.call_select(store, &user_data).await?),
        Call::OnSubscribe(conn, topic) => Reply::Unit(guest.call_on_subscribe(store, &conn, &topic).await?),
        Call::OnUnsubscribe(conn, topic) => Reply::Unit(guest.call_on_unsubscribe(store, &conn, &topic).await?),
        Call::OnClose(conn) => Reply::Unit(guest.call_on_close(store, &conn).await?),
    })
}

/// Record a rejected reload.
pub fn rejected(metrics: &PluginMetrics) {
    metrics.rejected_reloads.fetch_add(1, Relaxed);
}
