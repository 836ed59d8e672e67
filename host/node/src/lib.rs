//! The presence engine as a Node.js addon (napi-rs), behind the JavaScript
//! facade in `index.js` that presents the svelte-adapter-uws extension's
//! `createPresence`.
//!
//! # Layout
//!
//! - `tracker`: [`tracker::Tracker`], one instance's engine (and plugin),
//!   started on first use, and [`tracker::MemoryStore`], a store trackers
//!   share in one process.
//! - `platform`: the engine's `Platform` here: what it would do to a
//!   connection, queued as events for the facade (sockets stay in
//!   JavaScript).
//! - `bench`: the engine alone, for the Node benchmark's baseline.
//!
//! One Tokio runtime per process serves every tracker (napi-rs's, started
//! with the first environment that loads the addon and stopped with the
//! last); `destroy()` stops a tracker's tasks.

// In a Rust test build napi-derive registers nothing, so the exported
// functions look unused there.
#![cfg_attr(test, allow(dead_code))]

mod bench;
mod platform;
mod tracker;
