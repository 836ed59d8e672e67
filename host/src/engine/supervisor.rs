//! The engine's background tasks (event pump, resyncer, heartbeat), each
//! restarted with backoff if it panics — a bug in a [`super::Platform`]
//! implementation, say — and the health they report: a task that is down
//! makes the engine unready until it runs again.

use futures::future::BoxFuture;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the engine's background tasks are doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Tasks that crashed and wait for their restart.
    pub down: Vec<&'static str>,
    /// Restarts since the engine started.
    pub restarts: u64,
}

impl Health {
    /// Every task runs.
    pub fn is_ok(&self) -> bool {
        self.down.is_empty()
    }
}

#[derive(Default)]
pub(super) struct Supervisor {
    down: Mutex<BTreeSet<&'static str>>,
    restarts: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Aborts the task it holds when dropped, so aborting a supervisor also
/// stops the task it watches.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    /// Run `make()` as a task; if it panics, count it, mark `name` down,
    /// wait, and run a fresh `make()`. A task that returns is not restarted.
    pub fn spawn(self: &Arc<Self>, name: &'static str, make: impl Fn() -> BoxFuture<'static, ()> + Send + 'static) {
        let weak = Arc::downgrade(self);
        let handle = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let mut task = AbortOnDrop(tokio::spawn(make()));
                let crashed = match (&mut task.0).await {
                    Err(e) if e.is_panic() => e,
                    _ => return,
                };
                let Some(this) = weak.upgrade() else { return };
                this.restarts.fetch_add(1, Ordering::Relaxed);
                this.set_down(name, true);
                let message = crashed.into_panic();
                let message = message
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| message.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(task = name, panic = %message, "engine task crashed; restarting in {backoff:?}");
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let Some(this) = weak.upgrade() else { return };
                this.set_down(name, false);
            }
        });
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
    }

    fn set_down(&self, name: &'static str, down: bool) {
        let mut set = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down {
            set.insert(name);
        } else {
            set.remove(name);
        }
    }

    pub fn health(&self) -> Health {
        Health {
            down: self.down.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect(),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }

    /// Stop every task (and the tasks they supervise).
    pub fn abort_all(&self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            task.abort();
        }
    }

    /// Wait until every task has ended (after [`Supervisor::abort_all`]).
    pub async fn wait_stopped(&self) {
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}
