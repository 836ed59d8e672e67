//! Plugin benchmark, the same `select` policy in Rust, Python and
//! TypeScript: per-export latency with instance reuse, a fresh instance,
//! load cold / from the cache / after a one-line edit, memory per instance,
//! and what a plugin adds to a join.

use super::percentiles;
use futures::StreamExt;
use presence::backend::memory::MemoryStore;
use presence::plugin::kv::MemoryKv;
use presence::plugin::{Action, PluginConfig, PluginHost, UpgradeRequest};
use presence::{Hub, Options, Presence};
use presence_tests::guests::{build_guest, build_js_guest, build_python_guest, edited_js_guest, Scratch};
use presence_tests::rss_kib;
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn sample<F, Fut>(n: usize, mut call: F) -> (f64, f64, f64)
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
    let (p50, p99) = percentiles(&mut samples);
    (p50, p99, samples.last().unwrap().as_secs_f64() * 1e6)
}

/// joins/s of `users` distinct users over 2,000 topics, 16 in flight (an
/// interpreted guest's `select` takes ~0.1 ms: 256 joins waiting for 32
/// instances would wait past the 10 ms default deadline).
async fn joins_per_second(presence: &Presence, hub: &Hub, users: usize) -> f64 {
    let conns: Vec<_> =
        (0..users).map(|i| hub.connect(json!({"id": format!("u{i}"), "name": "n", "color": "c"}), 1 << 20)).collect();
    let started = Instant::now();
    futures::stream::iter(conns.iter().enumerate())
        .for_each_concurrent(16, |(i, (conn, _))| async move {
            presence.join(*conn, &format!("t{}", i % 2000)).await.expect("join");
        })
        .await;
    users as f64 / started.elapsed().as_secs_f64()
}

/// One guest's figures: `rows` of p50/p99 latencies, then single values.
struct Figures {
    latencies: Vec<(&'static str, (f64, f64, f64))>,
    values: Vec<(&'static str, String)>,
}

/// A guest to measure: its component, and (for the incremental row) a
/// one-line edit of it.
struct Guest {
    name: &'static str,
    wasm: PathBuf,
    edited: Option<PathBuf>,
}

fn guests() -> Vec<Guest> {
    let edited_js = edited_js_guest("examples/select-js", "bench-select-js-edit", |s| {
        s.replace("name: user.name ?? null", "name: user.name ?? 'anonymous'")
    });
    vec![
        Guest { name: "Rust", wasm: build_guest("examples/select-guest"), edited: None },
        Guest { name: "Python", wasm: build_python_guest("examples/select-py", "app"), edited: None },
        Guest { name: "JS", wasm: build_js_guest("examples/select-js"), edited: Some(edited_js) },
    ]
}

pub async fn run() {
    println!("\n### Plugins (select-guest, select-py, select-js; wasmtime 48)\n");
    let guests = guests();
    let mut all = Vec::new();
    for guest in &guests {
        eprintln!("measuring the {} guest", guest.name);
        all.push(measure(guest).await);
    }
    let header: Vec<&str> = guests.iter().map(|g| g.name).collect();
    println!("| measure (p50 / p99 / max) | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(header.len()));
    for (i, (name, _)) in all[0].latencies.iter().enumerate() {
        let cells: Vec<String> = all
            .iter()
            .map(|f| {
                let (p50, p99, max) = f.latencies[i].1;
                format!("{p50:.1} / {p99:.1} / {max:.0} µs")
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!();
    println!("| measure | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(header.len()));
    for (i, (name, _)) in all[0].values.iter().enumerate() {
        let cells: Vec<&str> = all.iter().map(|f| f.values[i].1.as_str()).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

async fn measure(guest: &Guest) -> Figures {
    let wasm = &guest.wasm;
    let scratch = Scratch::new("bench-plugin");
    let mut config = PluginConfig::new(wasm);
    config.cache_dir = Some(scratch.path("cache"));
    // Room for the slowest calls: the table reports them (max), not failures.
    config.limits.call_deadline = Duration::from_millis(200);
    let rss_before = rss_kib();
    let started = Instant::now();
    let plugin = PluginHost::start(config.clone(), Arc::new(MemoryKv::default())).await.expect("load");
    let cold = started.elapsed();
    let rss_loaded = rss_kib();
    let started = Instant::now();
    let again = PluginHost::start(config.clone(), Arc::new(MemoryKv::default())).await.expect("load from cache");
    let cached = started.elapsed();
    again.select_fn()(json!({"id": "x"})).await.expect("select");
    let rss_cached = rss_kib();
    drop(again);
    let incremental = match &guest.edited {
        Some(edited) => {
            let mut config = config.clone();
            config.path = edited.clone();
            let started = Instant::now();
            let edited = PluginHost::start(config, Arc::new(MemoryKv::default())).await.expect("load the edit");
            let took = started.elapsed();
            drop(edited);
            format!("{:.0} ms", ms(took))
        }
        None => "—".into(),
    };

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
    const N: usize = 5_000;
    let latencies = vec![
        (
            "`select`, reused instance",
            sample(N, |_| {
                let f = select(user.clone());
                async move {
                    f.await.unwrap();
                }
            })
            .await,
        ),
        (
            "`authorize`, reused instance",
            sample(N, |_| async {
                plugin.authorize(presence::ConnId::new(1), &user, "room", Action::Subscribe).await.unwrap()
            })
            .await,
        ),
        (
            "`authenticate`, reused instance",
            sample(N, |_| async {
                plugin.authenticate(request.clone()).await.unwrap();
            })
            .await,
        ),
        ("`on-subscribe` + `on-unsubscribe` (join and leave inside, memory backend)", {
            let (conn, _rx) = hub.connect(user.clone(), 1 << 20);
            let (plugin, user) = (&plugin, &user);
            sample(N / 4, |_| async move {
                plugin.on_subscribe(conn, user, "room").await.unwrap();
                plugin.on_unsubscribe(conn, user, "room").await.unwrap();
            })
            .await
        }),
        ("fresh instance (instantiate + one `select`)", {
            let mut fresh = Vec::new();
            for _ in 0..50 {
                fresh.push(plugin.instantiate_once().await.expect("instantiate"));
            }
            let (p50, p99) = percentiles(&mut fresh);
            (p50, p99, fresh.last().unwrap().as_secs_f64() * 1e6)
        }),
    ];

    // Memory per live instance: 16 more idle instances that each served a
    // `select`, RSS before and after.
    let before_pool = rss_kib();
    let alive = plugin.instances_alive();
    plugin.fill_pool(alive + 16, &user).await.expect("instances");
    let added = plugin.instances_alive() - alive;
    let per_instance = rss_kib().saturating_sub(before_pool) as f64 / added as f64 / 1024.0;

    // A join with the plugin's select vs the built-in one, same engine setup.
    let plain_hub = Hub::new();
    let plain = Presence::new(Arc::new(MemoryStore::new().backend()), plain_hub.clone(), Options::default()).unwrap();
    let without = joins_per_second(&plain, &plain_hub, 20_000).await;
    let plugin_hub = Hub::new();
    let options = Options { select: Some(plugin.select_fn()), ..Options::default() };
    let with_plugin = Presence::new(Arc::new(MemoryStore::new().backend()), plugin_hub.clone(), options).unwrap();
    let with = joins_per_second(&with_plugin, &plugin_hub, 20_000).await;
    let values = vec![
        ("component size", format!("{:.1} MB", std::fs::metadata(wasm).unwrap().len() as f64 / 1e6)),
        ("load cold (compile + checks + smoke call)", format!("{:.0} ms", ms(cold))),
        ("load from the precompiled cache", format!("{:.1} ms", ms(cached))),
        ("load after a one-line change (functions reused)", incremental),
        ("host RSS added by the first load (cold compile, one instance)", mib(rss_loaded.saturating_sub(rss_before))),
        ("host RSS added by a second host loading it from the cache", mib(rss_cached.saturating_sub(rss_loaded))),
        ("RSS per further live instance", format!("{per_instance:.2} MiB")),
        ("joins/s, in-memory engine, built-in select", format!("{without:.0}")),
        ("joins/s, in-memory engine, plugin select", format!("{with:.0}")),
        ("plugin select overhead per join", format!("{:.1} µs", (1.0 / with - 1.0 / without) * 1e6)),
    ];
    Figures { latencies, values }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
