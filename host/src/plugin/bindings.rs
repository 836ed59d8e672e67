//! The one place `bindgen!` runs over `wit/`: every other module imports the
//! generated types from here. Imports are async (they reach Redis) and
//! trappable (the host can stop a guest that abuses them).

// Generated code: its items are documented by `wit/plugin.wit`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::exports::presence::plugin::guest;
pub use self::presence::plugin::types::{Action, Connection, Denial, Pair, UpgradeRequest};

/// The interface name a guest must export, without its version.
pub const GUEST_INTERFACE: &str = "presence:plugin/guest";
/// The contract version this host serves (any 0.1.x guest loads).
pub const CONTRACT_VERSION: &str = "0.1.1";
