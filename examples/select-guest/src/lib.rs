//! A `select`-only plugin: others see a user's `id`, `name` and `color`,
//! nothing else. Every other export keeps the built-in behaviour.
//!
//! Build with: `cargo build --release --target wasm32-wasip2 --manifest-path examples/select-guest/Cargo.toml`
//! Run with:   `cargo run -p presence --bin presenced -- --plugin examples/select-guest/target/wasm32-wasip2/release/select_guest.wasm`

use presence_guest::{Json, Plugin};
use serde_json::{json, Value};

struct PublicProfile;

impl Plugin for PublicProfile {
    fn select(user_data: Json) -> Result<Json, String> {
        let user: Value = serde_json::from_str(&user_data).map_err(|e| e.to_string())?;
        Ok(json!({ "id": user["id"], "name": user["name"], "color": user["color"] }).to_string())
    }
}

presence_guest::export_plugin!(PublicProfile);
