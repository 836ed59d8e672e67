#![warn(missing_docs)]
//! The default `select`: turning a connection's raw user data into the public
//! data others see. One implementation for the host's built-in default and
//! the guest SDK's default, so the two can never drift apart. No
//! dependencies beyond `serde_json`: it builds for wasm32 guests too.

use serde_json::{Map, Value};

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
