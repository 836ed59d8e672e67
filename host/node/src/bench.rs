//! The engine alone, as the Node benchmark's baseline: the same joins the
//! JavaScript side makes through the facade, made here on a [`presence::Hub`]
//! and the in-memory backend, so the difference is what crossing between
//! JavaScript and Rust costs.

use napi_derive::napi;
use presence::backend::memory::MemoryStore;
use presence::{Hub, Options, Presence};
use std::sync::Arc;

/// Seconds `joins` joins take, in batches of `batch` at once, each user new
/// to its topic of `per_topic` members.
#[napi]
pub async fn bench_engine_joins(joins: u32, per_topic: u32, batch: u32) -> napi::Result<f64> {
    let hub = Hub::new();
    let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), hub.clone())
        .options(Options::default())
        .build()
        .map_err(|e| napi::Error::from_reason(e.to_string()))?;
    let conns: Vec<_> = (0..joins)
        .map(|i| hub.connect(serde_json::json!({"id": format!("u{i}"), "name": "bench"}), 64 << 20))
        .collect();
    let started = std::time::Instant::now();
    for chunk in (0..joins as usize).collect::<Vec<_>>().chunks(batch.max(1) as usize) {
        let joins = chunk.iter().map(|&i| {
            let topic = format!("room-{}", i as u32 / per_topic.max(1));
            let (presence, conn) = (presence.clone(), conns[i].0);
            async move { presence.join(conn, &topic).await }
        });
        for result in futures::future::join_all(joins).await {
            result.map_err(|e| napi::Error::from_reason(e.to_string()))?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    presence.shutdown().await;
    Ok(elapsed)
}
