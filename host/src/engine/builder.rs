//! The one way to wire an engine: [`PresenceBuilder`] takes the backend, the
//! platform, the options and an optional [`Policy`] (the plugin host), and
//! connects the policy both ways — its `select` into the options, the engine
//! into the policy's presence imports — so neither can be forgotten.

use super::{Error, Options, Platform, Presence, SelectFn};
use crate::backend::Backend;
use std::sync::Arc;

/// What a policy (such as [`crate::plugin::PluginHost`]) brings to an engine.
pub trait Policy: Send + Sync {
    /// The `select` the engine uses for every user's public data.
    fn select(&self) -> SelectFn;
    /// Called once with the running engine, which the policy may act on
    /// (without keeping it alive: keep a [`super::WeakPresence`]).
    fn attach(&self, presence: &Presence);
}

/// Builds a [`Presence`]; see [`Presence::builder`].
///
/// ```no_run
/// use presence::backend::memory::MemoryStore;
/// use presence::plugin::{kv::MemoryKv, PluginConfig, PluginHost};
/// use presence::{Hub, Options, Presence};
/// use std::sync::Arc;
///
/// # async fn wire() -> anyhow::Result<()> {
/// let plugin = PluginHost::start(PluginConfig::new("policy.wasm"), Arc::new(MemoryKv::default())).await?;
/// let hub = Hub::new();
/// let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), hub.clone())
///     .options(Options { key: "userId".into(), ..Options::default() })
///     .policy(&plugin) // its `select`, and its hooks' access to the engine
///     .build()?;
/// # Ok(())
/// # }
/// ```
pub struct PresenceBuilder<'p> {
    backend: Arc<dyn Backend>,
    platform: Arc<dyn Platform>,
    options: Options,
    policy: Option<&'p dyn Policy>,
}

impl<'p> PresenceBuilder<'p> {
    pub(super) fn new(backend: Arc<dyn Backend>, platform: Arc<dyn Platform>) -> Self {
        Self { backend, platform, options: Options::default(), policy: None }
    }

    /// Options (default: [`Options::default`]).
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// A policy: its `select` replaces the options' one, and it is attached
    /// to the engine once built.
    pub fn policy(mut self, policy: &'p dyn Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Validate the options and start the engine (inside a tokio runtime).
    pub fn build(self) -> Result<Presence, Error> {
        let mut options = self.options;
        if let Some(policy) = &self.policy {
            options.select = Some(policy.select());
        }
        let presence = Presence::new(self.backend, self.platform, options)?;
        if let Some(policy) = self.policy {
            policy.attach(&presence);
        }
        Ok(presence)
    }
}
