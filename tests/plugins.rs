//! The plugin runtime with real components built from `examples/` and
//! `tests/guests/` during the run: defaults, hostile guests, loader errors,
//! hot reload under load, and the precompiled cache.

use presence::plugin::kv::MemoryKv;
use presence::plugin::{Action, LoadError, PluginConfig, PluginHost, UpgradeRequest};
use presence::{ConnId, Hub, Presence};
use presence_tests::guests::{build_guest, build_wat_guest, deploy, Scratch};
use presence_tests::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "plugins/js.rs"]
mod js;

/// Tests that measure deadlines while other tests compile components would
/// share two cores with cranelift; they take turns instead.
static CPU_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn host(path: &std::path::Path) -> PluginHost {
    PluginHost::start(PluginConfig::new(path), Arc::new(MemoryKv::default())).await.expect("plugin loads")
}

/// An engine whose `select` is the plugin's, attached to the plugin.
async fn engine_with(plugin: &PluginHost) -> (Presence, Arc<Hub>) {
    let hub = Hub::new();
    let backend = Store::memory().backend().await;
    let presence = Presence::builder(backend, hub.clone()).options(fast_options()).policy(plugin).build().unwrap();
    (presence, hub)
}

fn request(query: &str) -> UpgradeRequest {
    UpgradeRequest {
        path: "/ws".into(),
        query: query.into(),
        headers: vec![],
        cookies: vec![],
        remote_address: "127.0.0.1:1".into(),
    }
}

/// The example `select` guest decides the public fields of joining users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_guest_chooses_public_fields() {
    let plugin = host(&build_guest("examples/select-guest")).await;
    let (presence, hub) = engine_with(&plugin).await;
    let (conn, mut rx) = hub.connect(json!({"id": "ada", "name": "Ada", "color": "teal", "email": "a@x"}), 1 << 20);
    presence.join(conn, "room").await.unwrap();
    let list: Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
    assert_eq!(list["data"], json!([{"key": "ada", "data": {"id": "ada", "name": "Ada", "color": "teal"}}]));
}

/// A guest that overrides nothing behaves like the built-in defaults:
/// query-string auth, the default select, and hooks routed like the original extension's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_reproduce_the_builtin_behaviour() {
    let plugin = host(&build_guest("tests/guests/defaults")).await;
    let user = plugin.authenticate(request("id=ada&name=Ada%20L&token=s")).await.unwrap();
    assert_eq!(user, json!({"id": "ada", "name": "Ada L", "token": "s"}));
    // A regular topic joins, with the default select applied.
    hooks_route_like_the_builtin(&plugin, &user, json!({"id": "ada", "name": "Ada L"})).await;
}

/// The built-in hooks, as every guest that keeps them must route: a
/// regular topic joins (the list shows `public`), `__presence:x` watches
/// without joining, other `__` topics do nothing, unsubscribe leaves the
/// topic, close leaves everything.
async fn hooks_route_like_the_builtin(plugin: &PluginHost, user: &Value, public: Value) {
    let (presence, hub) = engine_with(plugin).await;
    let (ada, mut rx) = hub.connect(user.clone(), 1 << 20);
    plugin.authorize(ada, user, "room", Action::Subscribe).await.unwrap();
    plugin.on_subscribe(ada, user, "room").await.unwrap();
    let list: Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
    assert_eq!(list["data"], json!([{"key": user["id"], "data": public}]));
    plugin.on_subscribe(ada, user, "__presence:lobby").await.unwrap();
    plugin.on_subscribe(ada, user, "__internal").await.unwrap();
    assert_eq!(presence.count("lobby").await.unwrap(), 0);
    assert!(hub.is_subscribed(ada, "__presence:lobby"));
    plugin.on_unsubscribe(ada, user, "__presence:lobby").await.unwrap();
    assert!(!hub.is_subscribed(ada, "__presence:lobby"));
    plugin.on_subscribe(ada, user, "hall").await.unwrap();
    plugin.on_unsubscribe(ada, user, "room").await.unwrap();
    assert_eq!(presence.count("room").await.unwrap(), 0);
    plugin.on_close(ada, user).await.unwrap();
    assert_eq!(presence.count("hall").await.unwrap(), 0);
}

/// Every hostile behaviour is contained with a clear error, the host keeps
/// serving other calls meanwhile, and sandboxed capabilities are denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_are_contained() {
    let _turn = CPU_HEAVY.lock().await;
    // A deadline well above the time the budgets take, so a test starved by a
    // parallel compile still trips the budget it means to, not the deadline.
    let mut config = PluginConfig::new(build_guest("tests/guests/hostile"));
    config.limits.call_deadline = Duration::from_millis(100);
    let plugin = Arc::new(PluginHost::start(config, Arc::new(MemoryKv::default())).await.expect("plugin loads"));
    let select = plugin.select_fn();
    let attack = |name: &str| select(json!({"id": "x", "attack": name}));

    // Normal calls keep succeeding while attacks run.
    let healthy = {
        let select = plugin.select_fn();
        tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..200 {
                ok += select(json!({"id": "fine"})).await.is_ok() as u32;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ok
        })
    };

    let err = attack("loop").await.unwrap_err();
    assert!(err.contains("deadline"), "{err}");
    let err = attack("memory").await.unwrap_err();
    assert!(err.contains("memory"), "{err}");
    let err = attack("recursion").await.unwrap_err();
    assert!(err.contains("trapped"), "{err}");
    let err = attack("panic").await.unwrap_err();
    assert!(err.contains("trapped"), "{err}");
    let err = attack("host-spam").await.unwrap_err();
    assert!(err.contains("host calls"), "{err}");
    let err = attack("huge").await.unwrap_err();
    assert!(err.contains("bytes"), "{err}");
    let err = attack("not-json").await.unwrap_err();
    assert!(err.contains("invalid JSON"), "{err}");
    // Chatty stdout completes; lines past the rate limit are dropped, not fatal.
    assert_eq!(attack("log-spam").await.unwrap(), json!({"spammed": true}));
    assert!(plugin.metrics().dropped_log_lines.load(Ordering::Relaxed) > 0);
    // No ambient capabilities: no files, no sockets, no environment.
    let read = attack("passwd").await.unwrap();
    assert!(read.get("read").is_none() && read["error"].is_string(), "{read}");
    let socket = attack("socket").await.unwrap();
    assert!(socket.get("connected").is_none() && socket["error"].is_string(), "{socket}");
    assert_eq!(attack("env").await.unwrap(), json!({"vars": 0}));
    // Strings far over every import's limit are refused, each naming it.
    let refusals = attack("huge-imports").await.unwrap();
    for import in ["kv_key", "kv_value", "publish_topic", "publish_event", "send_data", "join_topic"] {
        assert!(refusals[import].as_str().is_some_and(|e| e.contains("bytes")), "{import}: {refusals}");
    }

    assert_eq!(healthy.await.unwrap(), 200, "other calls kept being served");
    assert_eq!(select(json!({"id": "after"})).await.unwrap(), json!({"id": "after", "hostile": true}));
    let m = plugin.metrics().export(presence::plugin::metrics::Export::Select);
    assert!(m.timeouts.load(Ordering::Relaxed) >= 1 && m.traps.load(Ordering::Relaxed) >= 4);
}

/// A hook cut off by its deadline while its `presence.join` waits on a paused
/// Redis does not cut the join in half: once Redis answers, the user is
/// joined, announced once, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_cut_off_mid_join_leaves_a_whole_join() {
    let _turn = CPU_HEAVY.lock().await;
    let mut config = PluginConfig::new(build_guest("tests/guests/hostile"));
    config.limits.hook_deadline = Duration::from_millis(300);
    let plugin = PluginHost::start(config, Arc::new(MemoryKv::default())).await.expect("plugin loads");
    let server = RedisServer::start();
    let store = Store::redis(&server).with_timeout(Duration::from_secs(5));
    let hub = Hub::new();
    let presence =
        Presence::builder(store.backend().await, hub.clone()).options(fast_options()).policy(&plugin).build().unwrap();
    let observer = Instance::start(&store, fast_options()).await;
    let mut watcher = observer.connect(json!({"id": "watcher"}));
    observer.presence.sync(watcher.id, "hang-room").await.unwrap();
    let user = json!({"id": "alice"});
    let (alice, _rx) = hub.connect(user.clone(), 1 << 20);
    presence.join(alice, "warmup").await.unwrap(); // Redis connection up

    server.pause();
    let err = plugin.on_subscribe(alice, &user, "hang-room").await.unwrap_err();
    assert!(matches!(err, presence::plugin::PolicyError::Failed(_)) && err.to_string().contains("deadline"), "{err}");
    server.resume();
    watcher.wait_for("join", |d| d["key"] == "alice").await;
    eventually("alice counted once", || async { presence.count("hang-room").await.ok() == Some(1) }).await;
    presence.tick().await;
    assert_eq!(watcher.count_for("join", "alice"), 1);
}

/// A plugin that traps while authenticating or authorizing denies (fails closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_fail_closed() {
    // The hostile guest's `select` attacks; a join through it fails cleanly.
    let plugin = host(&build_guest("tests/guests/hostile")).await;
    let (presence, hub) = engine_with(&plugin).await;
    let (conn, _rx) = hub.connect(json!({"id": "x", "attack": "panic"}), 1 << 20);
    let err = presence.join(conn, "room").await.unwrap_err();
    assert!(err.to_string().contains("select rejected"), "{err}");
    assert_eq!(presence.count("room").await.unwrap(), 0);
    assert!(!hub.is_subscribed(conn, "__presence:room"));
}

/// Components that do not fit are refused with a message that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfit_components_are_refused_in_plain_words() {
    let scratch = Scratch::new("misfits");
    let load = |path: std::path::PathBuf| async move {
        PluginHost::start(PluginConfig::new(path), Arc::new(MemoryKv::default())).await.err().expect("refused")
    };
    std::fs::write(scratch.path("garbage.wasm"), b"definitely not wasm").unwrap();
    assert!(matches!(load(scratch.path("garbage.wasm")).await, LoadError::NotWasm));
    std::fs::write(scratch.path("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let err = load(scratch.path("core.wasm")).await;
    assert!(matches!(err, LoadError::CoreModule) && err.to_string().contains("wasm32-wasip2"), "{err}");
    let err = load(build_guest("tests/guests/other-world")).await;
    assert!(matches!(err, LoadError::MissingExport { .. }), "{err}");
    assert!(err.to_string().contains("presence:plugin/guest@0.1.1"), "{err}");
    let err = load(build_guest("tests/guests/wrong-version")).await;
    assert!(matches!(err, LoadError::Version { .. }), "{err}");
    assert!(err.to_string().contains("0.2.0") && err.to_string().contains("0.1.1"), "{err}");
    let err = load(scratch.path("missing.wasm")).await;
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
}

/// Hot reload while calls run: zero failed calls, the new version takes over,
/// garbage and hostile versions are rejected and the old one keeps serving;
/// a version seen before comes back from the precompiled cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_nothing() {
    let _turn = CPU_HEAVY.lock().await;
    let select_guest = build_guest("examples/select-guest");
    let defaults_guest = build_guest("tests/guests/defaults");
    let scratch = Scratch::new("reload");
    let live = scratch.path("plugin.wasm");
    deploy(&select_guest, &live);
    let mut config = PluginConfig::new(&live);
    config.watch = true;
    // What is under test is that no call is lost across swaps; a roomy
    // deadline keeps CPU contention from other tests out of the verdict.
    config.limits.call_deadline = Duration::from_millis(250);
    config.cache_dir = Some(scratch.path("cache"));
    let plugin = Arc::new(PluginHost::start(config, Arc::new(MemoryKv::default())).await.unwrap());
    assert_eq!(plugin.generation(), 1);

    let failures = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (select, failures, calls, stop) = (plugin.select_fn(), failures.clone(), calls.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = select(json!({"id": "u", "name": "N", "secret": "s"})).await {
                        eprintln!("call failed during reloads: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    // A new version by rename: picked up by the watcher.
    deploy(&defaults_guest, &live);
    eventually("generation 2 serves", || async { plugin.generation() == 2 }).await;
    let select = plugin.select_fn();
    assert_eq!(select(json!({"id": "u", "secret": "s"})).await.unwrap(), json!({"id": "u"}));

    // Garbage, a core module and a misfit are rejected; generation 2 keeps serving.
    for bad in [
        b"garbage".to_vec(),
        b"\0asm\x01\0\0\0".to_vec(),
        std::fs::read(build_guest("tests/guests/other-world")).unwrap(),
    ] {
        let rejected_before = plugin.metrics().rejected_reloads.load(Ordering::Relaxed);
        std::fs::write(scratch.path("next.tmp"), &bad).unwrap();
        std::fs::rename(scratch.path("next.tmp"), &live).unwrap();
        eventually("rejection noticed", || async {
            plugin.metrics().rejected_reloads.load(Ordering::Relaxed) > rejected_before
        })
        .await;
        assert_eq!(plugin.generation(), 2);
    }

    // Back to the first version: it was compiled before, the cache serves it.
    deploy(&select_guest, &live);
    eventually("generation 3 serves", || async { plugin.generation() == 3 }).await;
    let cached = std::fs::read_dir(scratch.path("cache")).unwrap().count();
    assert!(cached >= 2, "both versions cached, found {cached}");
    assert_eq!(
        select(json!({"id": "u", "name": "N", "color": "c", "x": 1})).await.unwrap(),
        json!({"id": "u", "name": "N", "color": "c"})
    );

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(calls.load(Ordering::Relaxed) > 100, "calls ran during the reloads");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no call failed across reloads");
    // The explicit reload call works too (same bytes: same generation).
    assert_eq!(plugin.reload().await.unwrap(), 3);
}

/// The token-gate example: signed tokens in the query or a cookie; topics
/// authorized by role; forged, expired and missing tokens denied with 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_gate_authenticates_and_authorizes_by_role() {
    let plugin = host(&build_guest("examples/token-gate")).await;
    let refused = token_gate_contract(&plugin).await;
    assert!(matches!(&refused, presence::plugin::PolicyError::Denied(r) if r.contains("needs a role")), "{refused}");
}

/// What every token gate (Rust `examples/token-gate`, TypeScript
/// `examples/gate-js`) does with the same tokens; returns the refusal of a
/// topic the token's roles do not open, which each words its own way.
async fn token_gate_contract(plugin: &PluginHost) -> presence::plugin::PolicyError {
    let exp = presence::backend::now_ms() + 60_000;
    let good = sign_token(json!({"id": "ada", "name": "Ada", "roles": ["team:red"], "exp": exp}));
    let user = plugin.authenticate(request(&format!("token={good}"))).await.unwrap();
    assert_eq!(user, json!({"id": "ada", "name": "Ada", "roles": ["team:red"], "exp": exp / 1000}));
    let mut by_cookie = request("");
    by_cookie.cookies.push(presence::plugin::Pair { name: "presence_token".into(), value: good.clone() });
    assert_eq!(plugin.authenticate(by_cookie).await.unwrap(), user);

    // A payload granting admin, carrying the signature of another payload.
    let admin_body = sign_token(json!({"id": "ada", "roles": ["admin"], "exp": exp}));
    let forged = format!("{}.{}", admin_body.split('.').next().unwrap(), good.split('.').nth(1).unwrap());
    for (query, why) in [
        (String::new(), "missing token"),
        (format!("token={}", forged), "bad token signature"),
        (format!("token={}", sign_token(json!({"id": "ada", "exp": 1}))), "token expired"),
        ("token=garbage".to_owned(), "malformed token"),
    ] {
        let denial = plugin.authenticate(request(&query)).await.unwrap_err();
        assert_eq!((denial.status, denial.reason.as_str()), (401, why));
    }

    plugin.authorize(ConnId::new(1), &user, "lobby", Action::Subscribe).await.unwrap();
    plugin.authorize(ConnId::new(1), &user, "team:red", Action::Observe).await.unwrap();
    let admin = json!({"id": "root", "roles": ["admin"]});
    plugin.authorize(ConnId::new(2), &admin, "team:blue", Action::Subscribe).await.unwrap();
    plugin.authorize(ConnId::new(1), &user, "team:blue", Action::Subscribe).await.unwrap_err()
}

/// The hook-wrapping example: presence only in `room-*` topics, and joins
/// rate-limited per user across two instances sharing one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_guest_wraps_hooks_and_rate_limits_across_instances() {
    let server = RedisServer::start();
    rooms_guest_across_instances(presence::backend::redis::RedisOptions::new(server.url())).await;
    // The counter lives under the plugin namespace, apart from presence keys,
    // and counts against the plugin's quota.
    let mut con = server.connection();
    let stored: Vec<String> = redis::cmd("KEYS").arg("presence#kv{presence.*}:*").query(&mut con).unwrap();
    let value = stored.iter().find(|k| k.ends_with("}:v:joins:ada")).unwrap_or_else(|| panic!("{stored:?}"));
    let counter: i64 = redis::cmd("GET").arg(value).query(&mut con).unwrap();
    assert_eq!(counter, 6);
    let index = value.replace("v:joins:ada", "index");
    let keys: i64 = redis::cmd("ZCARD").arg(&index).query(&mut con).unwrap();
    assert_eq!(keys, 1, "the key counts against its shard's quota");
}

/// The same on a three-master Redis Cluster: the plugin kv and the presence
/// keys both live there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_guest_rate_limits_across_instances_on_a_cluster() {
    let urls = tokio::task::spawn_blocking(shared_cluster).await.unwrap();
    let mut options = presence::backend::redis::RedisOptions::new(urls);
    options.prefix = format!("t{:08x}", rand::random::<u32>());
    rooms_guest_across_instances(options).await;
}

async fn rooms_guest_across_instances(redis: presence::backend::redis::RedisOptions) {
    use presence::backend::redis::RedisBackend;
    use presence::plugin::kv::{PluginKv, RedisKv};
    let wasm = build_guest("examples/rooms-guest");
    let mut instances = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(redis.clone()).await.unwrap();
        let kv = RedisKv::connect(&redis, Default::default()).await;
        let kv = Arc::new(kv.expect("kv connects"));
        stores.push(kv.clone());
        let plugin = PluginHost::start(PluginConfig::new(&wasm), kv).await.unwrap();
        let hub = Hub::new();
        let presence =
            Presence::builder(Arc::new(backend), hub.clone()).options(fast_options()).policy(&plugin).build().unwrap();
        instances.push((plugin, presence, hub));
    }
    let user = json!({"id": "ada"});
    // Outside rooms: no presence.
    let (plugin, presence, hub) = &instances[0];
    let (conn, _rx) = hub.connect(user.clone(), 1 << 20);
    plugin.on_subscribe(conn, &user, "chat").await.unwrap();
    assert_eq!(presence.count("chat").await.unwrap(), 0);
    // Five joins across both instances pass; the sixth, on either, is refused.
    let mut receivers = Vec::new();
    for i in 0..5 {
        let (plugin, presence, hub) = &instances[i % 2];
        let (conn, rx) = hub.connect(user.clone(), 1 << 20);
        receivers.push(rx);
        plugin.on_subscribe(conn, &user, &format!("room-{i}")).await.unwrap();
        assert_eq!(presence.count(&format!("room-{i}")).await.unwrap(), 1);
    }
    let (plugin, presence, hub) = &instances[1];
    let (conn, _rx) = hub.connect(user.clone(), 1 << 20);
    let refused = plugin.on_subscribe(conn, &user, "room-5").await.unwrap_err();
    assert!(refused.to_string().contains("rate limited"), "{refused}");
    assert_eq!(presence.count("room-5").await.unwrap(), 0);
    for kv in stores {
        assert_eq!(kv.get("joins:ada").await.unwrap().as_deref(), Some("6"), "both instances see one counter");
    }
}

/// A plugin sets count-only rules: the rooms guest makes rooms beyond 100
/// users show their observers a count instead of members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_makes_big_rooms_count_only() {
    let wasm = build_guest("examples/rooms-guest");
    let plugin = PluginHost::start(PluginConfig::new(&wasm), Arc::new(MemoryKv::default())).await.unwrap();
    let hub = Hub::new();
    let options = presence::Options { count_window: Duration::from_millis(20), ..fast_options() };
    let presence = Presence::builder(Arc::new(presence::backend::memory::MemoryStore::new().backend()), hub.clone())
        .options(options)
        .policy(&plugin)
        .build()
        .unwrap();
    let instance = Instance { presence: presence.clone(), hub: hub.clone() };
    let mut observer = instance.connect(json!({"id": "observer"}));
    presence.sync(observer.id, "room-stadium").await.unwrap();
    let mut receivers = Vec::new();
    for i in 0..101 {
        let user = json!({"id": format!("fan-{i}")});
        let (conn, rx) = hub.connect(user.clone(), 1 << 20);
        receivers.push(rx);
        plugin.on_subscribe(conn, &user, "room-stadium").await.unwrap();
    }
    observer.wait_for("count", |n| n == &json!(101)).await;
    assert_eq!(observer.events("join").len(), 100, "members are shown up to the plugin's threshold");
    assert_eq!(observer.last_list_keys(), Vec::<String>::new(), "then replaced by the count");
}

/// The same `select` policy written in Python (componentize-py) loads and
/// behaves like the Rust one: the contract is language-neutral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_guest_speaks_the_same_contract() {
    let _turn = CPU_HEAVY.lock().await;
    let wasm = presence_tests::guests::build_python_guest("examples/select-py", "app");
    let scratch = Scratch::new("python");
    let mut config = PluginConfig::new(&wasm);
    config.cache_dir = Some(scratch.path("cache"));
    let plugin = PluginHost::start(config, Arc::new(MemoryKv::default())).await.expect("python guest loads");
    let (presence, hub) = engine_with(&plugin).await;
    let user = plugin.authenticate(request("id=ada&name=Ada&color=teal&email=a%40x")).await.unwrap();
    assert_eq!(user["email"], "a@x");
    let (conn, mut rx) = hub.connect(user.clone(), 1 << 20);
    plugin.on_subscribe(conn, &user, "room").await.unwrap();
    let list: Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
    assert_eq!(list["data"], json!([{"key": "ada", "data": {"id": "ada", "name": "Ada", "color": "teal"}}]));
    plugin.on_close(conn, &user).await.unwrap();
    assert_eq!(presence.count("room").await.unwrap(), 0);
}

/// Guests written in WebAssembly text attack the limits a Rust guest cannot
/// reach: a table grown by 2^30 elements traps naming the limit (and costs
/// the host next to nothing), too many memories or tables fail the load in
/// plain words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_and_memory_bombs_hit_their_limits() {
    let bomb = build_wat_guest("table-bomb", "", "(drop (table.grow $funcs (ref.null func) (i32.const 1073741824)))");
    let plugin = host(&bomb).await;
    let before = rss_kib();
    for _ in 0..20 {
        let refused = plugin.authorize(ConnId::new(1), &json!({"id": "x"}), "t", Action::Subscribe).await.unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("table limit reached: at most 100000 elements"), "{message}");
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 8 * 1024, "20 table bombs grew the host by {grown} KiB");
    assert_eq!(plugin.select_fn()(json!({"id": "after"})).await.unwrap(), json!({}), "the plugin still answers");

    for (name, fields, limit) in [
        ("many-memories", "(memory 1) (memory 1) (memory 1) (memory 1) (memory 1)", "memory limit reached"),
        ("many-tables", &"(table 1 funcref) ".repeat(70), "table limit reached"),
    ] {
        let wasm = build_wat_guest(name, fields, "");
        let refused = PluginHost::start(PluginConfig::new(&wasm), Arc::new(MemoryKv::default())).await.err();
        let message = refused.expect("refused").to_string();
        assert!(message.contains(limit), "{name}: {message}");
    }
}

/// However many calls arrive at once, at most `max_instances` instances
/// exist; the calls beyond wait for a place within their deadline, or are
/// refused saying so. Afterwards the plugin serves normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_flood_is_bounded() {
    let _turn = CPU_HEAVY.lock().await;
    let mut config = PluginConfig::new(build_guest("tests/guests/hostile"));
    config.limits.max_instances = 3;
    config.limits.hook_deadline = Duration::from_millis(300);
    let plugin = Arc::new(PluginHost::start(config, Arc::new(MemoryKv::default())).await.unwrap());
    let user = json!({"id": "flood"});
    // Each call spins in its hook until the deadline, holding an instance.
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let (plugin, user) = (plugin.clone(), user.clone());
            tokio::spawn(async move { plugin.on_subscribe(ConnId::new(i), &user, &format!("hang-{i}")).await })
        })
        .collect();
    let mut peak = 0;
    while !calls.iter().all(|c| c.is_finished()) {
        peak = peak.max(plugin.instances_alive());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!((1..=3).contains(&peak), "peak of {peak} instances alive");
    let mut busy = 0;
    for call in calls {
        let error = call.await.unwrap().unwrap_err();
        busy += error.to_string().contains("instances stayed busy") as u32;
        assert!(error.to_string().contains("deadline"), "{error}");
    }
    assert!(busy > 0, "some calls found no instance free");
    assert_eq!(plugin.select_fn()(json!({"id": "after"})).await.unwrap(), json!({"id": "after", "hostile": true}));
}

/// The precompiled cache loads only what this host wrote: a planted
/// artifact is refused (and counted) and the plugin compiled instead; a
/// directory others can write is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_cache_artifact_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let cache = Scratch::new("planted-cache");
    let mut config = PluginConfig::new(build_guest("tests/guests/defaults"));
    config.cache_dir = Some(cache.0.clone());
    drop(PluginHost::start(config.clone(), Arc::new(MemoryKv::default())).await.expect("first load"));
    let artifacts: Vec<_> = std::fs::read_dir(&cache.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    // Plant native code under the artifact's name.
    std::fs::write(&artifacts[0], b"\x7fELF planted native code").unwrap();
    let plugin = PluginHost::start(config.clone(), Arc::new(MemoryKv::default())).await.expect("compiled instead");
    assert_eq!(plugin.metrics().cache_rejected.load(Ordering::Relaxed), 1);
    assert_eq!(plugin.select_fn()(json!({"id": "a", "__x": 1})).await.unwrap(), json!({"id": "a"}));
    // The artifact was written again, this time by the host: trusted.
    let again = PluginHost::start(config.clone(), Arc::new(MemoryKv::default())).await.unwrap();
    assert_eq!(again.metrics().cache_rejected.load(Ordering::Relaxed), 0);

    std::fs::set_permissions(&cache.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = PluginHost::start(config, Arc::new(MemoryKv::default())).await.err().expect("refused");
    assert!(
        matches!(refused, LoadError::Cache { .. }) && refused.to_string().contains("writable by others"),
        "{refused}"
    );
}

/// The quota every plugin store keeps, here 3 keys and 100 bytes: refusals
/// name the limit, overwrites add nothing, expired and deleted keys give
/// their room back. Leaves `d`, `e` and `f` set.
async fn keeps_a_small_quota(kv: &dyn presence::plugin::kv::PluginKv) {
    for key in ["a", "b", "c"] {
        kv.set(key, "1", Some(Duration::from_millis(100))).await.unwrap();
    }
    let refused = kv.set("d", "1", None).await.unwrap_err();
    assert!(refused.contains("at most 3 keys"), "{refused}");
    kv.set("a", "2", None).await.expect("overwriting a key adds none");
    let refused = kv.set("b", &"x".repeat(99), None).await.unwrap_err();
    assert!(refused.contains("at most 100 bytes"), "{refused}");
    // b and c expire; the next write reclaims their room.
    eventually("expired keys give their room back", || async { kv.set("d", "1", None).await.is_ok() }).await;
    // a, d and now e: full again, until a goes.
    kv.increment("e", 1, None).await.unwrap();
    let refused = kv.set("f", "1", None).await.unwrap_err();
    assert!(refused.contains("at most 3 keys"), "{refused}");
    kv.delete("a").await.unwrap();
    kv.set("f", "1", None).await.expect("a deleted key gives its room back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_kv_keeps_its_quota() {
    use presence::plugin::kv::Quota;
    let kv = MemoryKv::new(Quota { max_keys: 3, max_bytes: 100 });
    keeps_a_small_quota(&kv).await;
    assert_eq!(kv.len(), 3);
}

/// The Redis store keeps a small quota exactly (one shard) and a large one
/// per shard (each shard its share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kv_keeps_its_quota() {
    use presence::backend::redis::RedisOptions;
    use presence::plugin::kv::{PluginKv, Quota, RedisKv};
    let server = RedisServer::start();
    let small =
        RedisKv::connect(&RedisOptions::new(server.url()), Quota { max_keys: 3, max_bytes: 100 }).await.unwrap();
    keeps_a_small_quota(&small).await;

    // 4,096 keys: 16 shards of 256. Writes spread over them, and a full
    // shard refuses while the others still take keys.
    let mut options = RedisOptions::new(server.url());
    options.prefix = "large".into();
    let large = RedisKv::connect(&options, Quota { max_keys: 4096, max_bytes: 16 << 20 }).await.unwrap();
    let mut written = 0;
    let mut refusal = None;
    for n in 0..5000 {
        match large.set(&format!("k{n}"), "v", None).await {
            Ok(()) => written += 1,
            Err(e) => refusal = Some(e),
        }
    }
    let refusal = refusal.expect("5,000 keys exceed a 4,096-key quota");
    assert!(refusal.contains("at most 4096 keys"), "{refusal}");
    assert_eq!(written, 4096, "every shard took exactly its share of 256");
    let mut con = server.connection();
    let shards: Vec<String> = redis::cmd("KEYS").arg("large#kv{large.*}:index").query(&mut con).unwrap();
    assert_eq!(shards.len(), 16, "{shards:?}");
}

/// One change of the plugin file gives exactly one reload, however often the
/// file is read afterwards (the reload's own read, a checksum, a backup):
/// reads are not changes. A broken file is refused once, and not compiled
/// again while it stays the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_one_reload_and_reads_are_not_changes() {
    let _turn = CPU_HEAVY.lock().await;
    let (first, second) = (build_guest("examples/select-guest"), build_guest("tests/guests/defaults"));
    let scratch = Scratch::new("one-reload");
    let live = scratch.path("plugin.wasm");
    deploy(&first, &live);
    let mut config = PluginConfig::new(&live);
    config.watch = true;
    let plugin = PluginHost::start(config, Arc::new(MemoryKv::default())).await.unwrap();
    let reloads = || plugin.metrics().reloads.load(Ordering::Relaxed);
    let rejected = || plugin.metrics().rejected_reloads.load(Ordering::Relaxed);
    let (reloads_before, rejected_before) = (reloads(), rejected());
    // `cp new p.tmp && mv p.tmp p.wasm`, as a deploy does.
    deploy(&second, &live);
    eventually("the change is loaded", || async { plugin.generation() == 2 }).await;
    // Read it, as `sha256sum` or a backup would, a few times over.
    for _ in 0..5 {
        let _ = std::fs::read(&live).unwrap();
    }
    // A quiet window (a count over time, not a wait for an event): several
    // debounce periods in which nothing may reload.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reloads() - reloads_before, 1, "exactly one reload for one change");
    assert_eq!(plugin.generation(), 2);

    std::fs::write(scratch.path("broken.tmp"), b"\0asm broken").unwrap();
    std::fs::rename(scratch.path("broken.tmp"), &live).unwrap();
    eventually("the broken file is refused", || async { rejected() > rejected_before }).await;
    for _ in 0..5 {
        let _ = std::fs::read(&live).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rejected() - rejected_before, 1, "refused once, not recompiled in a loop");
    assert!(matches!(plugin.reload().await, Err(LoadError::AlreadyRejected)), "an explicit reload says why");
    assert_eq!(plugin.generation(), 2, "the previous version keeps serving");
}

/// 64 connections each subscribe to 40 topics in one `subscribe-batch`
/// through a plugin whose subscribe hook joins (and so asks `select` of a
/// second instance), default limits: hooks never take every instance, so
/// no join is denied, and new users keep connecting meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_in_flight_never_starve_the_calls_they_wait_on() {
    use presence::server::{ServerConfig, ServerLimits};
    use presence_tests::ws::Served;
    let _turn = CPU_HEAVY.lock().await;
    let wasm = build_guest("tests/guests/defaults");
    let limits = ServerLimits { max_connections_per_address: 1000, ..ServerLimits::default() };
    let served = Served::start(ServerConfig {
        plugin: Some(PluginConfig::new(wasm)),
        options: presence::Options { max_topics_per_connection: 100, ..fast_options() },
        limits,
        ..ServerConfig::default()
    })
    .await;
    let mut clients = Vec::new();
    for n in 0..64 {
        let mut client = served.connect(&format!("id=u{n}")).await;
        client.hello(&["batch"]).await;
        clients.push(client);
    }
    let topics: Vec<String> = (0..40).map(|t| format!("room-{t}")).collect();
    for client in &mut clients {
        client.subscribe_batch(&topics, Some(1)).await;
    }
    // New users connect while the hooks run.
    let newcomers = futures::future::join_all((0..10).map(|n| served.connect_owned(format!("id=new{n}")))).await;
    for mut newcomer in newcomers {
        newcomer.wait_frame("welcome", |f| f["type"] == "welcome").await;
    }
    let mut denied = 0;
    for client in &mut clients {
        for topic in &topics {
            let topic = topic.clone();
            let ack = client.wait_frame("an ack", move |f| f["ref"] == 1 && f["topic"] == topic.as_str()).await;
            denied += usize::from(ack["type"] != "subscribed");
        }
    }
    assert_eq!(denied, 0, "joins denied while hooks ran");
    for topic in &topics {
        assert_eq!(served.server.presence().count(topic).await.unwrap(), 64);
    }
}

/// An expiry beyond a year is refused before anything is written, on both
/// stores: no counter is left behind without an expiry, outside the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_ttls_are_checked_before_anything_is_written() {
    use presence::plugin::kv::{PluginKv, RedisKv};
    let server = RedisServer::start();
    let redis =
        RedisKv::connect(&presence::backend::redis::RedisOptions::new(server.url()), Default::default()).await.unwrap();
    let stores: [Box<dyn PluginKv>; 2] = [Box::new(MemoryKv::default()), Box::new(redis)];
    let absurd = Some(Duration::from_millis(100_000_000_000_000_000));
    for store in &stores {
        let refused = store.increment("n", 1, absurd).await.unwrap_err();
        assert!(refused.contains("ttl-ms") && refused.contains("a year"), "{refused}");
        assert!(store.set("k", "v", absurd).await.unwrap_err().contains("ttl-ms"));
        assert_eq!(store.get("n").await.unwrap(), None, "nothing was written");
        assert_eq!(store.increment("n", 2, Some(Duration::from_secs(60))).await.unwrap(), 2);
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut server.connection()).unwrap();
    for key in keys.iter().filter(|k| k.contains("#kv") && k.contains("}:v:")) {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut server.connection()).unwrap();
        assert!(ttl != -1, "{key} has no expiry");
    }
}
