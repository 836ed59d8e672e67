//! Signed session cookies for the auth preflight (`POST /__ws/auth`): the
//! plugin authenticates that request once, and the next upgrade — on any
//! instance that shares a key — carries the user data in an HttpOnly cookie
//! instead of calling the plugin again. `DELETE /__ws/auth` logs out.
//!
//! A cookie is `base64url({"u":user data,"exp":unix seconds}).base64url(HMAC-SHA256)`.
//! It expires with the session's ttl, or sooner with the token it came
//! from: user data carrying a numeric `exp` (unix seconds, as in a JWT)
//! bounds the session, and every upgrade checks it again. An invalid,
//! forged, expired or incomplete cookie is ignored (the upgrade then
//! authenticates as usual). Several keys may be given: the first signs, every
//! one verifies, so a key is rotated by putting the new one first and
//! dropping the old one after a ttl.

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Signer = Hmac<sha2::Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "presence_session";

/// Shortest key accepted.
pub const MIN_KEY_BYTES: usize = 32;

/// Issues and checks session cookies.
pub struct Sessions {
    /// The first signs; every one verifies.
    keys: Vec<Vec<u8>>,
    ttl: Duration,
    /// Cookies get `Secure` (HTTPS only).
    secure: bool,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When user data says its token expires (`exp`, unix seconds).
fn token_expiry(user_data: &Value) -> Option<u64> {
    user_data.get("exp").and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f.max(0.0) as u64)))
}

impl Sessions {
    /// With `keys` (shared by every instance; the first signs), or a random
    /// one made now (sessions then only work on this instance, until it
    /// restarts).
    pub fn new(keys: Vec<Vec<u8>>, ttl: Duration, secure: bool) -> Self {
        let keys = match keys.is_empty() {
            true => vec![(0..MIN_KEY_BYTES).map(|_| rand::random::<u8>()).collect()],
            false => keys,
        };
        Self { keys, ttl, secure }
    }

    fn signer(key: &[u8]) -> Signer {
        Signer::new_from_slice(key).expect("HMAC takes any key length")
    }

    fn attributes(&self, max_age: u64, https: bool) -> String {
        let secure = if self.secure || https { "; Secure" } else { "" };
        format!("Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
    }

    /// A `Set-Cookie` value carrying `user_data`, valid for the ttl or until
    /// its token expires, whichever is first; `None` if the token has
    /// already expired. `https`: the request came over HTTPS (`Secure`).
    pub fn issue(&self, user_data: &Value, https: bool) -> Option<String> {
        let now = unix_now();
        let exp = token_expiry(user_data).map_or(now + self.ttl.as_secs(), |exp| exp.min(now + self.ttl.as_secs()));
        if exp <= now {
            return None;
        }
        let body = URL_SAFE_NO_PAD.encode(json!({"u": user_data, "exp": exp}).to_string());
        let mut mac = Self::signer(&self.keys[0]);
        mac.update(body.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Some(format!("{COOKIE}={body}.{signature}; {}", self.attributes(exp - now, https)))
    }

    /// A `Set-Cookie` value that ends the session in the browser.
    pub fn logout(&self, https: bool) -> String {
        format!("{COOKIE}=; {}", self.attributes(0, https))
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
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let signed = self.keys.iter().any(|key| {
            let mut mac = Self::signer(key);
            mac.update(body.as_bytes());
            mac.verify_slice(&signature).is_ok() // constant time
        });
        if !signed {
            return None;
        }
        let mut session: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        let now = unix_now();
        let user_data = session.get_mut("u").filter(|u| !u.is_null())?.take();
        let alive = session["exp"].as_u64()? > now && token_expiry(&user_data).is_none_or(|exp| exp > now);
        alive.then_some(user_data)
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

    fn sessions(keys: &[&[u8]], ttl: u64) -> Sessions {
        Sessions::new(keys.iter().map(|k| k.to_vec()).collect(), Duration::from_secs(ttl), false)
    }

    #[test]
    fn a_cookie_round_trips_only_with_a_shared_key() {
        let key: &[u8] = &[7; 32];
        let issued = sessions(&[key], 60).issue(&json!({"id": "ada"}), false).unwrap();
        assert!(issued.contains("Max-Age=60") && !issued.contains("Secure"), "{issued}");
        let other_instance = sessions(&[key], 60);
        assert_eq!(other_instance.verify(&cookie_header(&issued)), Some(json!({"id": "ada"})));
        let stranger = Sessions::new(Vec::new(), Duration::from_secs(60), false);
        assert_eq!(stranger.verify(&cookie_header(&issued)), None);
        let forged = issued.replacen("presence_session=e", "presence_session=f", 1);
        assert_eq!(other_instance.verify(&cookie_header(&forged)), None);
        assert_eq!(sessions(&[key], 0).issue(&json!({"id": "ada"}), false), None, "a zero ttl issues nothing");
    }

    /// The newest key signs and the older ones still verify, until dropped.
    #[test]
    fn keys_rotate() {
        let (old, new): (&[u8], &[u8]) = (&[1; 32], &[2; 32]);
        let before = sessions(&[old], 60).issue(&json!({"id": "ada"}), false).unwrap();
        let rotating = sessions(&[new, old], 60);
        assert!(rotating.verify(&cookie_header(&before)).is_some(), "an old cookie still works");
        let after = rotating.issue(&json!({"id": "bo"}), false).unwrap();
        assert!(sessions(&[new], 60).verify(&cookie_header(&after)).is_some(), "signed with the newest key");
        assert!(sessions(&[new], 60).verify(&cookie_header(&before)).is_none(), "the old key dropped");
    }

    /// A session ends with the token it came from, and a cookie without
    /// user data is refused.
    #[test]
    fn a_session_lives_no_longer_than_its_token() {
        let key: &[u8] = &[3; 32];
        let sessions = sessions(&[key], 3600);
        let soon = unix_now() + 5;
        let issued = sessions.issue(&json!({"id": "ada", "exp": soon}), true).unwrap();
        assert!(issued.contains("Max-Age=5") || issued.contains("Max-Age=4"), "{issued}");
        assert!(issued.contains("; Secure"), "over HTTPS: {issued}");
        assert!(sessions.verify(&cookie_header(&issued)).is_some());
        assert_eq!(sessions.issue(&json!({"id": "ada", "exp": unix_now() - 1}), false), None, "expired token");
        // Signed, but no user data in it.
        let body = URL_SAFE_NO_PAD.encode(json!({"exp": unix_now() + 60}).to_string());
        let mut mac = Sessions::signer(key);
        mac.update(body.as_bytes());
        let cookie = format!("{COOKIE}={body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        assert_eq!(sessions.verify(&cookie_header(&cookie)), None);
        assert!(sessions.logout(false).contains("Max-Age=0"));
    }
}
