//! Calling into a loaded plugin: instances are reused from a pool (a call
//! costs microseconds, not an instantiation); each call runs under its
//! deadline — epoch interruption while guest code runs, a timeout around the
//! whole call (host calls included) — and an instance that trapped or timed
//! out is thrown away, never re-entered.

use super::bindings::{guest, Plugin, PluginPre};
use super::limits::Limits;
use super::metrics::{Export, PluginMetrics};
use super::state::{GuestState, HostEnv};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::{Engine, Store, Trap};

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
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("no plugin is loaded")]
    NoPlugin,
    #[error("plugin `{export}` exceeded its {deadline:?} deadline")]
    Timeout { export: &'static str, deadline: std::time::Duration },
    #[error("plugin `{export}` trapped: {message}")]
    Trap { export: &'static str, message: String },
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
}

impl Loaded {
    pub fn new(generation: u64, digest: String, pre: PluginPre<GuestState>) -> Self {
        Self { generation, digest, pre, idle: Mutex::new(Vec::new()) }
    }

    pub fn pre_clone(&self) -> PluginPre<GuestState> {
        self.pre.clone()
    }

    async fn instantiate(&self, engine: &Engine, env: &Arc<HostEnv>) -> wasmtime::Result<Instance> {
        let mut store = Store::new(engine, GuestState::new(env.clone()));
        store.limiter(|state| &mut state.store_limits);
        store.set_epoch_deadline(Limits::ticks(env.limits.instantiate_deadline));
        let plugin = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance { store, plugin })
    }

    /// Run one call on a pooled (or new) instance, under the export's deadline.
    pub async fn call(&self, engine: &Engine, env: &Arc<HostEnv>, call: Call) -> Result<Reply, CallError> {
        let export = call.export();
        let metrics = env.metrics.export(export);
        let deadline = if export.is_hook() { env.limits.hook_deadline } else { env.limits.call_deadline };
        let pooled = self.idle.lock().unwrap().pop();
        let mut instance = match pooled {
            Some(instance) => instance,
            // A fresh instance gets its own budget: large guests (a Python
            // interpreter) take longer to set up than to answer a call.
            None => match tokio::time::timeout(env.limits.instantiate_deadline, self.instantiate(engine, env)).await {
                Ok(Ok(instance)) => instance,
                Ok(Err(error)) => {
                    metrics.traps.fetch_add(1, Relaxed);
                    return Err(CallError::Trap { export: export.name(), message: describe(&error) });
                }
                Err(_) => {
                    metrics.timeouts.fetch_add(1, Relaxed);
                    return Err(CallError::Timeout {
                        export: export.name(),
                        deadline: env.limits.instantiate_deadline,
                    });
                }
            },
        };
        let started = Instant::now();
        let run = async {
            instance.store.data_mut().reset_budget();
            instance.store.set_epoch_deadline(Limits::ticks(deadline));
            let reply = invoke(&mut instance, call).await?;
            Ok::<_, wasmtime::Error>((instance, reply))
        };
        let outcome = tokio::time::timeout(deadline, run).await;
        metrics.observe(started.elapsed());
        match outcome {
            Ok(Ok((instance, reply))) => {
                let mut idle = self.idle.lock().unwrap();
                if idle.len() < env.limits.max_idle_instances {
                    idle.push(instance);
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
                Err(CallError::Trap { export: export.name(), message: describe(&error) })
            }
            Err(_) => {
                metrics.timeouts.fetch_add(1, Relaxed);
                Err(CallError::Timeout { export: export.name(), deadline })
            }
        }
    }
}

/// A trap's message, with the limit that caused it when there is one.
fn describe(error: &wasmtime::Error) -> String {
    let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
    let text = chain.join(": ");
    if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
        return format!("memory limit reached ({text})");
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
