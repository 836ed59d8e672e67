//! Plugin benchmark: per-export latency with instance reuse, a fresh
//! instance, reload cold and from the cache, and what a plugin adds to a join.

use super::percentiles;
use futures::StreamExt;
use presence::backend::memory::MemoryStore;
use presence::plugin::kv::MemoryKv;
use presence::plugin::{Action, PluginConfig, PluginHost, UpgradeRequest};
use presence::{Hub, Options, Presence};
use presence_tests::guests::{build_guest, Scratch};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn sample<F, Fut>(n: usize, mut call: F) -> (f64, f64)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..n / 10 {
        call(i).await; // warm the pool and caches
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        call(i).await;
        samples.push(started.elapsed());
    }
    percentiles(&mut samples)
}

/// joins/s of `users` distinct users over 2,000 topics, 256 in flight.
async fn joins_per_second(presence: &Presence, hub: &Hub, users: usize) -> f64 {
    let conns: Vec<_> =
        (0..users).map(|i| hub.connect(json!({"id": format!("u{i}"), "name": "n", "color": "c"}), 1 << 20)).collect();
    let started = Instant::now();
    futures::stream::iter(conns.iter().enumerate())
        .for_each_concurrent(256, |(i, (conn, _))| async move {
            presence.join(*conn, &format!("t{}", i % 2000)).await.expect("join");
        })
        .await;
    users as f64 / started.elapsed().as_secs_f64()
}

pub async fn run() {
    println!("\n### Plugins (examples/select-guest, wasmtime 48)\n");
    let wasm = build_guest("examples/select-guest");
    let scratch = Scratch::new("bench-plugin");
    let mut config = PluginConfig::new(&wasm);
    config.cache_dir = Some(scratch.path("cache"));
    let started = Instant::now();
    let plugin = PluginHost::start(config.clone(), Arc::new(MemoryKv::default())).await.expect("load");
    let cold = started.elapsed();
    let started = Instant::now();
    let again = PluginHost::start(config, Arc::new(MemoryKv::default())).await.expect("load from cache");
    let cached = started.elapsed();
    drop(again);

    let hub = Hub::new();
    // Kept alive: the hooks measured below act on it.
    let _engine =
        Presence::builder(Arc::new(MemoryStore::new().backend()), hub.clone()).policy(&plugin).build().unwrap();
    let user = json!({"id": "ada", "name": "Ada", "color": "teal", "token": "secret"});
    let request = UpgradeRequest {
        path: "/ws".into(),
        query: "id=ada&name=Ada".into(),
        headers: vec![],
        cookies: vec![],
        remote_address: "127.0.0.1:1".into(),
    };
    let select = plugin.select_fn();
    const N: usize = 20_000;
    let rows = [
        (
            "select",
            sample(N, |_| {
                let f = select(user.clone());
                async move {
                    f.await.unwrap();
                }
            })
            .await,
        ),
        (
            "authorize",
            sample(N, |_| async {
                plugin.authorize(presence::ConnId::new(1), &user, "room", Action::Subscribe).await.unwrap()
            })
            .await,
        ),
        (
            "authenticate",
            sample(N, |_| async {
                plugin.authenticate(request.clone()).await.unwrap();
            })
            .await,
        ),
        ("on-subscribe + on-unsubscribe (join and leave inside, memory backend)", {
            let (conn, _rx) = hub.connect(user.clone(), 1 << 20);
            let (plugin, user) = (&plugin, &user);
            sample(N / 4, |_| async move {
                plugin.on_subscribe(conn, user, "room").await.unwrap();
                plugin.on_unsubscribe(conn, user, "room").await.unwrap();
            })
            .await
        }),
    ];
    let mut fresh = Vec::new();
    for _ in 0..200 {
        fresh.push(plugin.instantiate_once().await.expect("instantiate"));
    }
    let (fresh_p50, fresh_p99) = percentiles(&mut fresh);

    // A join with the plugin's select vs the built-in one, same engine setup.
    let plain_hub = Hub::new();
    let plain = Presence::new(Arc::new(MemoryStore::new().backend()), plain_hub.clone(), Options::default()).unwrap();
    let without = joins_per_second(&plain, &plain_hub, 20_000).await;
    let plugin_hub = Hub::new();
    let options = Options { select: Some(plugin.select_fn()), ..Options::default() };
    let with_plugin = Presence::new(Arc::new(MemoryStore::new().backend()), plugin_hub.clone(), options).unwrap();
    let with = joins_per_second(&with_plugin, &plugin_hub, 20_000).await;

    println!("| measure | p50 | p99 |");
    println!("|---|---|---|");
    for (name, (p50, p99)) in rows {
        println!("| `{name}`, reused instance | {p50:.1} µs | {p99:.1} µs |");
    }
    println!("| fresh instance (instantiate + one `select`) | {fresh_p50:.1} µs | {fresh_p99:.1} µs |");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| load cold (compile + checks + smoke call) | {:.0} ms |", ms(cold));
    println!("| load from the precompiled cache | {:.1} ms |", ms(cached));
    println!("| joins/s, in-memory engine, built-in select | {without:.0} |");
    println!("| joins/s, in-memory engine, plugin select | {with:.0} |");
    println!("| plugin select overhead per join | {:.1} µs |", (1.0 / with - 1.0 / without) * 1e6);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
