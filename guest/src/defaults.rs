//! The built-in behaviours, as guest code: what every [`crate::Plugin`]
//! method does unless overridden. Each mirrors the host's own default.

use crate::presence;
use serde_json::{Map, Value};

const PRESENCE_PREFIX: &str = "__presence:";

/// The default `select`: drop `__`-prefixed and secret-looking fields at
/// every depth (the same function the host uses when there is no plugin).
pub fn select(user_data: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(user_data).map_err(|e| format!("user data is not JSON: {e}"))?;
    Ok(presence_public_data::default_select(&value)?.to_string())
}

/// The built-in subscribe hook.
pub fn on_subscribe(conn: u64, topic: &str) -> Result<(), String> {
    match topic.strip_prefix(PRESENCE_PREFIX) {
        Some(watched) => presence::sync(conn, watched),
        None if topic.starts_with("__") => Ok(()),
        None => presence::join(conn, topic),
    }
}

/// The built-in unsubscribe hook.
pub fn on_unsubscribe(conn: u64, topic: &str) -> Result<(), String> {
    match topic.strip_prefix(PRESENCE_PREFIX) {
        Some(watched) => {
            presence::unsync(conn, watched);
            Ok(())
        }
        None if topic.starts_with("__") => Ok(()),
        None => presence::leave(conn, Some(topic)),
    }
}

/// `a=1&b=x%20y` → `{"a":"1","b":"x y"}` (later duplicates win).
pub fn user_data_from_query(query: &str) -> String {
    let mut fields = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        fields.insert(percent_decode(name), Value::String(percent_decode(value)));
    }
    Value::Object(fields).to_string()
}

/// Decode `%XX` escapes and `+` (as a space); invalid escapes stay as written.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
