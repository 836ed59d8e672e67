//! A presence instance as its own OS process, for tests that kill it with
//! SIGKILL: joins `users` users on `topic`, prints `ready`, then serves until
//! killed.
//!
//! Usage: presence-instance <redis-url> <topic> <users> <heartbeat-ms> <ttl-ms>

use presence::backend::redis::{RedisBackend, RedisOptions};
use presence::{Hub, Options, Presence};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, topic, users, heartbeat, ttl] = args.as_slice() else {
        anyhow::bail!("usage: presence-instance <redis-url> <topic> <users> <heartbeat-ms> <ttl-ms>");
    };
    let backend = RedisBackend::connect(RedisOptions::new(url.clone())).await?;
    let options = Options {
        heartbeat: Duration::from_millis(heartbeat.parse()?),
        ttl: Duration::from_millis(ttl.parse()?),
        ..Options::default()
    };
    let hub = Hub::new();
    let presence = Presence::new(Arc::new(backend), hub.clone(), options)?;
    let mut receivers = Vec::new();
    for i in 0..users.parse::<usize>()? {
        let (conn, rx) = hub.connect(serde_json::json!({"id": format!("crashed-{i}")}), 64 << 20);
        presence.join(conn, topic).await?;
        receivers.push(rx);
    }
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
