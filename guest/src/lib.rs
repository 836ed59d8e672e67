#![warn(missing_docs)]
//! # presence-guest: the Rust SDK for presence plugins
//!
//! A plugin is a WebAssembly component built with
//! `cargo build --target wasm32-wasip2 --release`. Implement [`Plugin`] —
//! every method has a default that reproduces the host's built-in behaviour —
//! and export it:
//!
//! ```ignore
//! use presence_guest::{Json, Plugin};
//!
//! struct NamesOnly;
//! impl Plugin for NamesOnly {
//!     fn select(user_data: Json) -> Result<Json, String> {
//!         let user: serde_json::Value = serde_json::from_str(&user_data).map_err(|e| e.to_string())?;
//!         Ok(serde_json::json!({ "name": user["name"] }).to_string())
//!     }
//! }
//! presence_guest::export_plugin!(NamesOnly);
//! ```
//!
//! # Layout
//!
//! - [`bindings`]: the one `wit_bindgen::generate!` over `../wit` (imports:
//!   [`presence`], [`log`], [`clock`], [`kv`]).
//! - [`Plugin`]: the exports, with defaults from [`defaults`].
//! - [`export_plugin!`]: wires a [`Plugin`] to the component's exports.

pub mod defaults;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "presence_guest::bindings",
    });
}

pub use bindings::exports::presence::plugin::guest::Guest;
pub use bindings::presence::plugin::types::{Action, Connection, Denial, Json, Pair, UpgradeRequest};
pub use bindings::presence::plugin::{clock, kv, log, presence};

/// A presence plugin. Override only what your policy changes.
pub trait Plugin {
    /// Upgrade request → user data (JSON), or a denial. Default: the query
    /// string's parameters as a JSON object (`?id=ada&name=Ada`), the
    /// documented demo behaviour — replace it in production.
    fn authenticate(request: UpgradeRequest) -> Result<Json, Denial> {
        Ok(defaults::user_data_from_query(&request.query))
    }

    /// May `conn` do `action` on `topic`? Default: yes.
    fn authorize(conn: Connection, topic: String, action: Action) -> Result<(), String> {
        let _ = (conn, topic, action);
        Ok(())
    }

    /// User data → public data. Default: drop `__`-prefixed and
    /// secret-looking fields, recursively.
    fn select(user_data: Json) -> Result<Json, String> {
        defaults::select(&user_data)
    }

    /// Default: the built-in subscribe hook (`__presence:<t>` → sync,
    /// other `__` topics → nothing, else join).
    fn on_subscribe(conn: Connection, topic: String) -> Result<(), String> {
        defaults::on_subscribe(conn.id, &topic)
    }

    /// Default: the built-in unsubscribe hook.
    fn on_unsubscribe(conn: Connection, topic: String) -> Result<(), String> {
        defaults::on_unsubscribe(conn.id, &topic)
    }

    /// Default: leave every topic.
    fn on_close(conn: Connection) -> Result<(), String> {
        presence::leave(conn.id, None)
    }
}

/// Export a [`Plugin`] implementation as this component's `guest` interface.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct Exports;
            impl $crate::Guest for Exports {
                fn authenticate(request: $crate::UpgradeRequest) -> Result<$crate::Json, $crate::Denial> {
                    <$plugin as $crate::Plugin>::authenticate(request)
                }
                fn authorize(conn: $crate::Connection, topic: String, action: $crate::Action) -> Result<(), String> {
                    <$plugin as $crate::Plugin>::authorize(conn, topic, action)
                }
                fn select(user_data: $crate::Json) -> Result<$crate::Json, String> {
                    <$plugin as $crate::Plugin>::select(user_data)
                }
                fn on_subscribe(conn: $crate::Connection, topic: String) -> Result<(), String> {
                    <$plugin as $crate::Plugin>::on_subscribe(conn, topic)
                }
                fn on_unsubscribe(conn: $crate::Connection, topic: String) -> Result<(), String> {
                    <$plugin as $crate::Plugin>::on_unsubscribe(conn, topic)
                }
                fn on_close(conn: $crate::Connection) -> Result<(), String> {
                    <$plugin as $crate::Plugin>::on_close(conn)
                }
            }
    $crate::bindings::export!(Exports with_types_in $crate::bindings);
        };
    };
}
