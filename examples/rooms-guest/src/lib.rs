//! Hook wrapping: custom subscribe behaviour around the built-in hooks.
//!
//! - Presence is joined only for rooms named `room-<letters, digits, ->`;
//!   other topics are subscribed without presence (the built-in hook would
//!   join them all).
//! - Joins are rate-limited per user across every instance: at most
//!   `JOINS_PER_WINDOW` per `WINDOW_MS`, counted in the plugin key-value store
//!   (Redis when the host runs on Redis).
//! - Rooms list their members up to `LISTED_MEMBERS` users; bigger rooms show
//!   their subscribers only a count (the host's count-only mode).
//! - Every refusal is logged through the host.
//!
//! Build with: `cargo build --release --target wasm32-wasip2 --manifest-path examples/rooms-guest/Cargo.toml`

use presence_guest::{defaults, kv, log, presence, Connection, Plugin};
use serde_json::Value;

const JOINS_PER_WINDOW: i64 = 5;
const WINDOW_MS: u64 = 10_000;
const LISTED_MEMBERS: u64 = 100;

fn is_room(topic: &str) -> bool {
    topic.strip_prefix("room-").is_some_and(|name| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

struct Rooms;

impl Plugin for Rooms {
    fn on_subscribe(conn: Connection, topic: String) -> Result<(), String> {
        if topic.starts_with("__") {
            return defaults::on_subscribe(conn.id, &topic);
        }
        if !is_room(&topic) {
            return Ok(()); // subscribed, but no presence outside rooms
        }
        let user: Value = serde_json::from_str(&conn.user_data).map_err(|e| e.to_string())?;
        let who = user["id"].as_str().map_or_else(|| format!("conn-{}", conn.id), str::to_owned);
        let joins = kv::increment(&format!("joins:{who}"), 1, Some(WINDOW_MS))?;
        if joins > JOINS_PER_WINDOW {
            log::log(log::Level::Warn, &format!("{who} is joining too fast ({joins} joins in the window)"));
            return Err(format!("rate limited: at most {JOINS_PER_WINDOW} joins per {} s", WINDOW_MS / 1000));
        }
        // Set before the join, so the room is counted from its first change
        // (setting the same rule again costs the host nothing).
        presence::count_only("room-", Some(LISTED_MEMBERS))?;
        presence::join(conn.id, &topic)
    }
}

presence_guest::export_plugin!(Rooms);
