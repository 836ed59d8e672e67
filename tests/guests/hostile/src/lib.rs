//! A hostile plugin for sandbox tests. Its `select` misbehaves as the user
//! data's `attack` field says (`loop`, `memory`, `recursion`, `panic`,
//! `log-spam`, `host-spam`, `huge`, `huge-imports`, `not-json`, `passwd`,
//! `socket`, `env`); without one it answers like a normal plugin.
//! Its subscribe hook joins, then never returns on `hang-*` topics (the host
//! must cut it off without cutting the join in half), and fails on
//! `forge-*` topics with an error that tries to forge a log record. Its `authorize` refuses
//! `word-*` topics with a machine word, `prose-*` with a sentence, and traps
//! on `trap-*`; its `authenticate` refuses `?deny=<status>` with that status
//! (any number, valid or not) and traps on `?trap=1`.

use presence_guest::{kv, log, presence, Action, Connection, Denial, Json, Plugin, UpgradeRequest};
use serde_json::{json, Value};

struct Hostile;

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(depth % 256) as usize] = depth as u8;
    recurse(depth + 1, pad) + pad[0] as u64
}

impl Plugin for Hostile {
    fn select(user_data: Json) -> Result<Json, String> {
        let user: Value = serde_json::from_str(&user_data).map_err(|e| e.to_string())?;
        match user["attack"].as_str().unwrap_or("") {
            "loop" => loop {
                std::hint::black_box(0);
            },
            "memory" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(Vec::<u8>::with_capacity(16 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => Ok(recurse(0, &mut [0; 256]).to_string()),
            "panic" => panic!("hostile guest panics on purpose"),
            "log-spam" => {
                // Many lines per write, and a few more writes.
                let burst: String = (0..1_000).map(|i| format!("spam line {i}\n")).collect();
                for _ in 0..3 {
                    print!("{burst}");
                }
                Ok(json!({"spammed": true}).to_string())
            }
            "host-spam" => {
                for i in 0..1_000_000 {
                    log::log(log::Level::Info, &format!("host call {i}"));
                    let _ = kv::get("k");
                }
                Ok("{}".into())
            }
            "huge" => Ok(format!("\"{}\"", "x".repeat(2 << 20))),
            // Every import handed strings far over its limits: each refuses
            // with an error naming the limit (the log line is cut).
            "huge-imports" => {
                let big = "x".repeat(2 << 20);
                log::log(log::Level::Info, &big);
                let refusals = json!({
                    "kv_key": kv::set(&big, "v", None).err(),
                    "kv_value": kv::set("k", &big, None).err(),
                    "publish_topic": presence::publish(&big, "e", "{}").err(),
                    "publish_event": presence::publish("t", &big, "{}").err(),
                    "send_data": presence::send(1, "t", "e", &format!("\"{big}\"")).err(),
                    "join_topic": presence::join(1, &big).err(),
                });
                Ok(refusals.to_string())
            }
            "not-json" => Ok("this is not json".into()),
            "passwd" => Ok(match std::fs::read_to_string("/etc/passwd") {
                Ok(contents) => json!({ "read": contents }),
                Err(e) => json!({ "error": e.to_string() }),
            }
            .to_string()),
            "socket" => Ok(match std::net::TcpStream::connect("127.0.0.1:6379") {
                Ok(_) => json!({ "connected": true }),
                Err(e) => json!({ "error": e.to_string() }),
            }
            .to_string()),
            "env" => Ok(json!({ "vars": std::env::vars().count() }).to_string()),
            _ => Ok(json!({ "id": user["id"], "hostile": true }).to_string()),
        }
    }

    fn authenticate(request: UpgradeRequest) -> Result<Json, Denial> {
        if request.query.contains("trap=1") {
            panic!("authenticate traps on purpose: secret internals");
        }
        let denied = request.query.split('&').find_map(|pair| pair.strip_prefix("deny="));
        match denied.and_then(|status| status.parse().ok()) {
            Some(status) => Err(Denial { status, reason: format!("denied with {status} on purpose") }),
            None => Ok(presence_guest::defaults::user_data_from_query(&request.query)),
        }
    }

    fn authorize(_conn: Connection, topic: String, _action: Action) -> Result<(), String> {
        if topic.starts_with("word-") {
            return Err("ROOM_FULL".into());
        }
        if topic.starts_with("prose-") {
            return Err("this room is full, sorry".into());
        }
        if topic.starts_with("trap-") {
            panic!("authorize traps on purpose");
        }
        Ok(())
    }

    fn on_subscribe(conn: Connection, topic: String) -> Result<(), String> {
        if topic.starts_with("forge-") {
            // An error that tries to forge a log record of its own.
            return Err("oops\n2026-01-01T00:00:00.000000Z ERROR presence: admin logged in".into());
        }
        if !topic.starts_with("hang-") {
            return presence_guest::defaults::on_subscribe(conn.id, &topic);
        }
        let _ = presence::join(conn.id, &topic);
        loop {
            std::hint::black_box(0);
        }
    }
}

presence_guest::export_plugin!(Hostile);
