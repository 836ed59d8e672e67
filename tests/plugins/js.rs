//! TypeScript guests (`examples/select-js`, `examples/gate-js`,
//! `tests/guests/hostile-js`) built with jco during the run: the same
//! contract as the Rust guests, no WASI imports, type errors caught before
//! the load, hostile scripts contained, and hot reload under load.

use super::{engine_with, hooks_route_like_the_builtin, request, token_gate_contract, CPU_HEAVY};
use presence::plugin::kv::MemoryKv;
use presence::plugin::{Action, PluginConfig, PluginHost, PolicyError};
use presence::ConnId;
use presence_tests::guests::{build_js_guest, component_imports, deploy, edited_js_guest, workspace, Scratch};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One compile cache for every JS test: a 12 MB component compiles once per
/// run, and each later load is a check and a copy.
fn cached(path: &Path) -> PluginConfig {
    let mut config = PluginConfig::new(path);
    config.cache_dir = Some(workspace().join("target/guests/js-cache"));
    config
}

async fn load(path: &Path) -> PluginHost {
    PluginHost::start(cached(path), Arc::new(MemoryKv::default())).await.expect("JS guest loads")
}

fn edited_hostile(name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    edited_js_guest("tests/guests/hostile-js", name, edit)
}

/// Built with every optional WASI feature off, a JS guest imports our
/// interfaces and nothing else; a wrong export signature fails `tsc`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_guests_import_only_the_plugin_world_and_are_typed() {
    for guest in ["examples/select-js", "examples/gate-js", "tests/guests/hostile-js"] {
        let imports = component_imports(&build_js_guest(guest));
        assert!(imports.iter().all(|i| i.starts_with("presence:plugin/")), "{guest} imports {imports:?}");
        assert!(imports.iter().any(|i| i.starts_with("presence:plugin/presence@")), "{guest}: {imports:?}");
    }
    let wrong = std::panic::catch_unwind(|| {
        edited_hostile("wrong-signature-js", |s| {
            s.replace("select(userData: string): string", "select(userData: number): string")
        })
    });
    let message = *wrong.expect_err("tsc refuses").downcast::<String>().unwrap();
    assert!(message.contains("tsc --noEmit failed") && message.contains("(userData: number) => string"), "{message}");
}

/// The select example in TypeScript: the query string authenticates, the
/// chosen fields are public, the hooks route like the built-in ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_select_guest_speaks_the_same_contract() {
    let _turn = CPU_HEAVY.lock().await;
    let plugin = load(&build_js_guest("examples/select-js")).await;
    let user = plugin.authenticate(request("id=ada&name=Ada%20L&color=teal&email=a%40x")).await.unwrap();
    assert_eq!(user, json!({"id": "ada", "name": "Ada L", "color": "teal", "email": "a@x"}));
    hooks_route_like_the_builtin(&plugin, &user, json!({"id": "ada", "name": "Ada L", "color": "teal"})).await;
    // Missing fields are null, as in the Rust and Python twins.
    let public = plugin.select_fn()(json!({"id": "bob", "secret": "s"})).await.unwrap();
    assert_eq!(public, json!({"id": "bob", "name": null, "color": null}));
}

/// The token gate in TypeScript, against the same tokens as the Rust one: a
/// refusal's machine word reaches the caller as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_gate_authenticates_and_authorizes_by_role() {
    let _turn = CPU_HEAVY.lock().await;
    let plugin = load(&build_js_guest("examples/gate-js")).await;
    assert_eq!(token_gate_contract(&plugin).await, PolicyError::Denied("FORBIDDEN_ROLE".into()));
    let user = json!({"id": "ada", "name": "Ada", "roles": ["team:red"]});
    let (presence, hub) = engine_with(&plugin).await;
    let (conn, mut rx) = hub.connect(user.clone(), 1 << 20);
    plugin.on_subscribe(conn, &user, "team:red").await.unwrap();
    let list: Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
    assert_eq!(list["data"], json!([{"key": "ada", "data": {"id": "ada", "name": "Ada"}}]), "roles stay private");
    assert_eq!(presence.count("team:red").await.unwrap(), 1);
}

/// A hostile script is contained as a hostile Rust guest is: a loop meets
/// its deadline, a memory bomb its limit, an exception is a clean failure,
/// and after each the next call is served by a fresh instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_js_guests_are_contained() {
    let _turn = CPU_HEAVY.lock().await;
    let mut config = cached(&build_js_guest("tests/guests/hostile-js"));
    config.limits.call_deadline = Duration::from_millis(200);
    let plugin = PluginHost::start(config, Arc::new(MemoryKv::default())).await.expect("loads");
    let select = plugin.select_fn();
    let attack = |name: &str| select(json!({"id": "x", "attack": name}));
    let fine =
        || async { assert_eq!(select(json!({"id": "ok"})).await.unwrap(), json!({"id": "ok", "hostile": true})) };

    let cases: [(&str, &[&str]); 8] = [
        ("loop", &["deadline"]),
        ("memory", &["memory", "trapped"]),
        ("recursion", &["trapped"]),
        ("throw", &["trapped"]),
        ("throw-string", &["select throws a string on purpose"]),
        ("huge", &["bytes"]),
        ("not-json", &["invalid JSON"]),
        ("host-spam", &["host calls"]),
    ];
    for (name, words) in cases {
        let err = attack(name).await.unwrap_err();
        assert!(words.iter().any(|w| err.contains(w)), "{name}: {err}");
        fine().await;
    }
    // authorize: a machine word is a denial; an exception fails closed.
    let user = json!({"id": "x"});
    let word = plugin.authorize(ConnId::new(1), &user, "word-1", Action::Subscribe).await.unwrap_err();
    assert_eq!(word, PolicyError::Denied("ROOM_FULL".into()));
    let thrown = plugin.authorize(ConnId::new(1), &user, "throw-1", Action::Subscribe).await.unwrap_err();
    assert!(matches!(thrown, PolicyError::Failed(_)), "{thrown}");
    plugin.authorize(ConnId::new(1), &user, "fine", Action::Subscribe).await.unwrap();
    // authenticate: an exception refuses with 503 and a generic reason.
    let denial = plugin.authenticate(request("throw=1")).await.unwrap_err();
    assert_eq!((denial.status, denial.reason.as_str()), (503, "authentication unavailable"));
    assert_eq!(plugin.authenticate(request("")).await.unwrap(), json!({"id": "anonymous"}));
    let m = plugin.metrics().export(presence::plugin::metrics::Export::Select);
    assert!(m.timeouts.load(Ordering::Relaxed) >= 1 && m.traps.load(Ordering::Relaxed) >= 3, "counted");
}

/// Joins keep succeeding while a JS policy is replaced by an edited one:
/// zero failed joins, and the edit serves within seconds (the bench
/// measures how fast; the compile reuses the unchanged functions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_hot_reload_under_load_loses_no_join() {
    let _turn = CPU_HEAVY.lock().await;
    let original = build_js_guest("tests/guests/hostile-js");
    let edited = edited_hostile("hostile-js-edit", |s| s.replace("hostile: true", "hostile: 'edited'"));
    let scratch = Scratch::new("js-reload");
    let live = scratch.path("plugin.wasm");
    deploy(&original, &live);
    let mut config = cached(&live);
    config.watch = true;
    config.limits.call_deadline = Duration::from_millis(500);
    let plugin = Arc::new(PluginHost::start(config, Arc::new(MemoryKv::default())).await.expect("loads"));
    let (presence, hub) = engine_with(&plugin).await;
    let failures = Arc::new(AtomicU64::new(0));
    let joins = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (presence, hub, failures, joins, stop) =
                (presence.clone(), hub.clone(), failures.clone(), joins.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (conn, _rx) = hub.connect(json!({"id": format!("w{w}-{i}")}), 1 << 16);
                    if let Err(e) = presence.join(conn, "room").await {
                        eprintln!("join failed during the reload: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    presence.leave(conn, "room").await.unwrap();
                    joins.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let landed = Instant::now();
    deploy(&edited, &live);
    let select = plugin.select_fn();
    // Long enough for a cold compile of a debug build: the bench measures the real figure.
    presence_tests::poll::until("the edit serves", Duration::from_secs(120), async || {
        let answer = select(json!({"id": "u"})).await;
        presence_tests::poll::when(answer.as_ref().ok() == Some(&json!({"id": "u", "hostile": "edited"})), answer)
    })
    .await;
    eprintln!("the edited JS policy served {:?} after it landed", landed.elapsed());
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(joins.load(Ordering::Relaxed) > 20, "joins ran during the reload");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no join failed across the reload");
    assert_eq!(plugin.generation(), 2);
}
