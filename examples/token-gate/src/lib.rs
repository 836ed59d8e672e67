//! Token gate: connections authenticate with a signed token, and topics are
//! authorized by the roles inside it.
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(secret, base64url(payload)))`
//! with payload `{"id": "...", "name": "...", "roles": ["..."], "exp": <unix ms>}`,
//! sent as `?token=…` or in the `presence_token` cookie.
//!
//! Topics: a topic without `:` (e.g. `lobby`) is open to every valid token; a
//! topic `team:red` needs the role `team:red` or `team:*`; the role `admin`
//! opens everything.
//!
//! The secret is compiled in: `TOKEN_GATE_SECRET=… cargo build --release --target wasm32-wasip2`
//! (default `dev-secret-change-me`, for the demo only).
//!
//! Build with: `cargo build --release --target wasm32-wasip2 --manifest-path examples/token-gate/Cargo.toml`

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use presence_guest::{clock, defaults, Action, Connection, Denial, Json, Plugin, UpgradeRequest};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = match option_env!("TOKEN_GATE_SECRET") {
    Some(secret) => secret,
    None => "dev-secret-change-me",
};

fn deny(status: u16, reason: &str) -> Denial {
    Denial { status, reason: reason.into() }
}

/// The token from `?token=` or the `presence_token` cookie.
fn token(request: &UpgradeRequest) -> Option<String> {
    let from_query = request
        .query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .map(|(_, value)| defaults::percent_decode(value));
    from_query.or_else(|| request.cookies.iter().find(|c| c.name == "presence_token").map(|c| c.value.clone()))
}

/// Check the signature and expiry; return the payload.
fn verify(token: &str) -> Result<Value, Denial> {
    let (payload_b64, signature_b64) = token.split_once('.').ok_or_else(|| deny(401, "malformed token"))?;
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| deny(401, "malformed token signature"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&signature).map_err(|_| deny(401, "bad token signature"))?;
    let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| deny(401, "malformed token payload"))?;
    let payload: Value = serde_json::from_slice(&payload).map_err(|_| deny(401, "token payload is not JSON"))?;
    if payload["exp"].as_u64().is_none_or(|exp| exp <= clock::now_ms()) {
        return Err(deny(401, "token expired"));
    }
    if !payload["id"].is_string() {
        return Err(deny(401, "token has no id"));
    }
    Ok(payload)
}

fn allowed(roles: &[&str], topic: &str) -> bool {
    if roles.contains(&"admin") {
        return true;
    }
    match topic.split_once(':') {
        None => true,
        Some((family, _)) => roles.contains(&topic) || roles.contains(&format!("{family}:*").as_str()),
    }
}

struct TokenGate;

impl Plugin for TokenGate {
    fn authenticate(request: UpgradeRequest) -> Result<Json, Denial> {
        let token = token(&request).ok_or_else(|| deny(401, "missing token"))?;
        let payload = verify(&token)?;
        // `exp` in seconds: a session cookie from the auth preflight ends
        // with the token (the host reads it from the user data).
        let exp = payload["exp"].as_u64().map(|ms| ms / 1000);
        Ok(json!({ "id": payload["id"], "name": payload["name"], "roles": payload["roles"], "exp": exp }).to_string())
    }

    fn authorize(conn: Connection, topic: String, action: Action) -> Result<(), String> {
        if matches!(action, Action::Unsubscribe) {
            return Ok(());
        }
        let user: Value = serde_json::from_str(&conn.user_data).map_err(|e| e.to_string())?;
        let roles: Vec<&str> = user["roles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if allowed(&roles, &topic) {
            Ok(())
        } else {
            Err(format!("topic {topic:?} needs a role this token does not have"))
        }
    }

    /// Others see the name, not the roles.
    fn select(user_data: Json) -> Result<Json, String> {
        let user: Value = serde_json::from_str(&user_data).map_err(|e| e.to_string())?;
        Ok(json!({ "id": user["id"], "name": user["name"] }).to_string())
    }
}

presence_guest::export_plugin!(TokenGate);
