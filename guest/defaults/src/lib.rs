#![warn(missing_docs)]
//! The built-in behaviours of presence, one implementation for the host's
//! defaults and the guest SDK's, so the two can never drift apart:
//!
//! - [`default_select`]: a connection's raw user data → the public data
//!   others see;
//! - [`route`]: what the built-in hooks do with a subscribed topic
//!   (`__presence:<t>` observes `t`, other `__` topics are ignored, the rest
//!   is joined);
//! - [`user_data_from_query`]: the demo identity, the query string's
//!   parameters as a JSON object.
//!
//! No dependencies beyond `serde_json`: it builds for wasm32 guests too.

use serde_json::{Map, Value};

/// Subscribing to `__presence:<topic>` observes `<topic>` without joining it.
pub const PRESENCE_PREFIX: &str = "__presence:";

/// What the built-in subscribe and unsubscribe hooks do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `__presence:<t>`: observe (or stop observing) `t`.
    Observe(&'a str),
    /// Another `__` topic: internal, nothing to do.
    Ignore,
    /// Any other topic: join (or leave) it.
    Join(&'a str),
}

/// The built-in hooks' routing of `topic`.
pub fn route(topic: &str) -> Route<'_> {
    match topic.strip_prefix(PRESENCE_PREFIX) {
        Some(watched) => Route::Observe(watched),
        None if topic.starts_with("__") => Route::Ignore,
        None => Route::Join(topic),
    }
}

/// The demo identity: `a=1&b=x%20y` → `{"a":"1","b":"x y"}` (later
/// duplicates win; an invalid escape stays as written).
pub fn user_data_from_query(query: &str) -> Value {
    let mut fields = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        fields.insert(percent_decode(name), Value::String(percent_decode(value)));
    }
    Value::Object(fields)
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

/// Nesting deeper than this is refused rather than walked.
pub const MAX_DEPTH: usize = 64;

/// Words that mark a field as secret; matched against the field name split on
/// `_`, `-`, `.` and camelCase (`accessToken`, `session_id`, `X-Auth`), each
/// word alone and each two neighbours joined (`api_key` → `apikey`).
const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "auth",
    "authorization",
    "session",
    "cookie",
    "jwt",
    "credential",
    "credentials",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
    "signingkey",
    "otp",
];

/// The original extension's default: drop `__`-prefixed and secret-looking fields, at every depth.
pub fn default_select(user_data: &Value) -> Result<Value, String> {
    strip(user_data, 0)
}

fn strip(value: &Value, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("user data is nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(match value {
        Value::Object(fields) => {
            let mut kept = Map::new();
            for (name, field) in fields {
                if !name.starts_with("__") && !looks_secret(name) {
                    kept.insert(name.clone(), strip(field, depth + 1)?);
                }
            }
            Value::Object(kept)
        }
        Value::Array(items) => Value::Array(items.iter().map(|item| strip(item, depth + 1)).collect::<Result<_, _>>()?),
        other => other.clone(),
    })
}

fn looks_secret(name: &str) -> bool {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c == '_' || c == '-' || c == '.' || c == ' ' {
            words.push(std::mem::take(&mut word));
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower {
            words.push(std::mem::take(&mut word));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        word.extend(c.to_lowercase());
    }
    words.push(word);
    let pairs = words.windows(2).map(|pair| pair.concat());
    words.iter().cloned().chain(pairs).any(|w| SECRET_WORDS.contains(&w.as_str()))
}
