//! Signed session cookies for the auth preflight (`POST /__ws/auth`): the
//! plugin authenticates that request once, and the next upgrade — on any
//! instance that shares the key — carries the user data in an HttpOnly
//! cookie instead of calling the plugin again.
//!
//! A cookie is `base64url({"u":user data,"exp":unix seconds}).base64url(HMAC-SHA256)`;
//! an invalid, forged or expired one is ignored (the upgrade then
//! authenticates as usual).

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Signer = Hmac<sha2::Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "presence_session";

/// Shortest key accepted from a key file.
pub const MIN_KEY_BYTES: usize = 32;

/// Issues and checks session cookies with one key.
pub struct Sessions {
    key: Vec<u8>,
    ttl: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Sessions {
    /// With `key` (shared by every instance), or a random one made now
    /// (sessions then only work on this instance, until it restarts).
    pub fn new(key: Option<Vec<u8>>, ttl: Duration) -> Self {
        let key = key.unwrap_or_else(|| (0..MIN_KEY_BYTES).map(|_| rand::random::<u8>()).collect());
        Self { key, ttl }
    }

    fn signer(&self) -> Signer {
        Signer::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// A `Set-Cookie` value carrying `user_data`.
    pub fn issue(&self, user_data: &Value) -> String {
        let body = json!({"u": user_data, "exp": unix_now() + self.ttl.as_secs()}).to_string();
        let body = URL_SAFE_NO_PAD.encode(body);
        let mut mac = self.signer();
        mac.update(body.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{COOKIE}={body}.{signature}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}", self.ttl.as_secs())
    }

    /// The user data of a valid, unexpired session cookie in `headers`.
    pub fn verify(&self, headers: &HeaderMap) -> Option<Value> {
        let token = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
        let (body, signature) = token.split_once('.')?;
        let mut mac = self.signer();
        mac.update(body.as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
        let session: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        (session["exp"].as_u64()? > unix_now()).then(|| session["u"].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie_header(set_cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let pair = set_cookie.split(';').next().unwrap();
        headers.insert(header::COOKIE, format!("other=1; {pair}").parse().unwrap());
        headers
    }

    #[test]
    fn a_cookie_round_trips_only_with_the_same_key() {
        let key = vec![7; 32];
        let issued = Sessions::new(Some(key.clone()), Duration::from_secs(60)).issue(&json!({"id": "ada"}));
        let other_instance = Sessions::new(Some(key), Duration::from_secs(60));
        assert_eq!(other_instance.verify(&cookie_header(&issued)), Some(json!({"id": "ada"})));
        let stranger = Sessions::new(None, Duration::from_secs(60));
        assert_eq!(stranger.verify(&cookie_header(&issued)), None);
        let forged = issued.replacen("presence_session=e", "presence_session=f", 1);
        assert_eq!(other_instance.verify(&cookie_header(&forged)), None);
        let expired = Sessions::new(Some(vec![7; 32]), Duration::ZERO).issue(&json!({"id": "ada"}));
        assert_eq!(other_instance.verify(&cookie_header(&expired)), None);
    }
}
