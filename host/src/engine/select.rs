//! The built-in `select` (drop `__`-prefixed and secret-looking fields,
//! recursively), shared with the guest SDK through `presence-defaults`.

pub use presence_defaults::{default_select, MAX_DEPTH};

#[cfg(test)]
mod tests {
    //! Here, not in `presence-defaults`, so `cargo test --workspace` runs them.
    use super::*;
    use serde_json::json;

    #[test]
    fn strips_internal_and_secret_fields_recursively() {
        let raw = json!({
            "id": 1, "name": "Ada", "__internal": true, "accessToken": "x", "author": "kept",
            "profile": {"__hidden": 1, "session_id": "s", "city": "Oslo", "list": [{"password": "p", "ok": 1}]}
        });
        assert_eq!(
            default_select(&raw).unwrap(),
            json!({"id": 1, "name": "Ada", "author": "kept", "profile": {"city": "Oslo", "list": [{"ok": 1}]}})
        );
    }

    /// Key-like secrets, whatever the separator or case.
    #[test]
    fn strips_keys_named_as_secrets() {
        let raw = json!({
            "api_key": 1, "apiKey": 2, "API-KEY": 3, "private_key": 4, "privateKey": 5, "access_token": 6,
            "refresh_token": 7, "aws.secret.access.key": 8, "keyboard": "kept", "monkey": "kept", "key": "kept"
        });
        assert_eq!(default_select(&raw).unwrap(), json!({"keyboard": "kept", "monkey": "kept", "key": "kept"}));
    }

    #[test]
    fn refuses_absurd_nesting() {
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!({ "a": deep });
        }
        assert!(default_select(&deep).unwrap_err().contains("deeper"));
    }
}
