//! The built-in behaviours, as guest code: what every [`crate::Plugin`]
//! method does unless overridden. The decisions live in `presence-defaults`,
//! the crate the host's own defaults use too.

use crate::presence;
use presence_defaults::Route;
use serde_json::Value;

pub use presence_defaults::{percent_decode, PRESENCE_PREFIX};

/// The default `select`: drop `__`-prefixed and secret-looking fields at
/// every depth (the same function the host uses when there is no plugin).
pub fn select(user_data: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(user_data).map_err(|e| format!("user data is not JSON: {e}"))?;
    Ok(presence_defaults::default_select(&value)?.to_string())
}

/// The built-in subscribe hook.
pub fn on_subscribe(conn: u64, topic: &str) -> Result<(), String> {
    match presence_defaults::route(topic) {
        Route::Observe(watched) => presence::sync(conn, watched),
        Route::Ignore => Ok(()),
        Route::Join(topic) => presence::join(conn, topic),
    }
}

/// The built-in unsubscribe hook.
pub fn on_unsubscribe(conn: u64, topic: &str) -> Result<(), String> {
    match presence_defaults::route(topic) {
        Route::Observe(watched) => {
            presence::unsync(conn, watched);
            Ok(())
        }
        Route::Ignore => Ok(()),
        Route::Join(topic) => presence::leave(conn, Some(topic)),
    }
}

/// `a=1&b=x%20y` → `{"a":"1","b":"x y"}` (later duplicates win), as JSON text.
pub fn user_data_from_query(query: &str) -> String {
    presence_defaults::user_data_from_query(query).to_string()
}
