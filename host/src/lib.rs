#![warn(missing_docs)]
//! # presence
//!
//! Who is online in each topic, across every server instance: the
//! svelte-adapter-uws presence API on Redis (or in memory), with exactly-once
//! `join`/`leave` announcements and per-hold expiry on Redis 6.2/7.0.
//!
//! # Layout
//!
//! - [`engine`]: the original extension's API ([`Presence`]) and its semantics — first/last
//!   local connection counting, local replicas, heartbeat, hooks. Talks to
//!   clients only through [`Platform`], to storage only through [`Backend`].
//! - [`backend`]: where the state lives — the [`Backend`] trait,
//!   [`backend::redis`] (Lua scripts, pub/sub, reconnection) and
//!   [`backend::memory`] (one process).
//! - [`plugin`]: policy as sandboxed WebAssembly components — the WIT
//!   contract's host side, deadlines and caps, hot reload.
//! - [`hub`]: a ready [`Platform`] — connections with bounded send queues
//!   and topic subscriptions — used by the server, embedders and tests.

pub mod backend;
pub mod engine;
pub mod hub;
pub mod metrics;
pub mod plugin;
pub mod server;
mod window;

pub use backend::Backend;
pub use engine::{
    ConnId, Envelope, Error, Hooks, Member, Members, Options, Platform, Presence, PresenceBuilder, Stats, TopicStats,
};
pub use hub::Hub;
/// The built-in behaviours the host and the guest SDK share: the default
/// `select`, the hooks' `__presence:` routing, the demo identity.
pub use presence_defaults as defaults;
