//! `presenced` end to end over real WebSocket clients: the client protocol,
//! hostile clients, keepalive, plugin auth, two instances on one Redis, and
//! graceful shutdown.

use futures::future::join_all;
use presence::backend::redis::RedisOptions;
use presence::plugin::PluginConfig;
use presence::server::{ServerConfig, ServerLimits};
use presence_tests::guests::build_guest;
use presence_tests::ws::{Served, WsClient};
use presence_tests::*;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn config() -> ServerConfig {
    ServerConfig {
        options: fast_options(),
        limits: ServerLimits { max_subscriptions: 3, messages_per_second: 20, ..ServerLimits::default() },
        ..ServerConfig::default()
    }
}

fn redis_config(server: &RedisServer) -> ServerConfig {
    let mut redis = RedisOptions::new(server.url());
    redis.timeout = Duration::from_millis(500);
    ServerConfig { redis: Some(redis), ..config() }
}

/// Two browsers-worth of protocol: subscribe joins and lists, others see
/// `join`; unsubscribe and close announce `leave`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_each_other_join_and_leave() {
    let served = Served::start(config()).await;
    let mut ada = served.connect("id=ada&name=Ada").await;
    ada.subscribe("room").await;
    let list = ada.wait_for("list", |_| true).await;
    assert_eq!(list["topic"], "__presence:room");
    assert_eq!(list["data"], json!([{"key": "ada", "data": {"id": "ada", "name": "Ada"}}]));
    let mut bob = served.connect("id=bob&name=Bob").await;
    bob.subscribe("room").await;
    ada.wait_for("join", |e| e["data"]["key"] == "bob").await;
    bob.close().await;
    ada.wait_for("leave", |e| e["data"]["key"] == "bob").await;
    // An observer (`__presence:room`) gets the list without joining.
    let mut watcher = served.connect("id=w").await;
    watcher.subscribe("__presence:room").await;
    let list = watcher.wait_for("list", |_| true).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(served.server.presence().count("room").await.unwrap(), 1);
    let (status, metrics) = served.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("presence_connections 2"), "{metrics}");
    assert!(metrics.contains("presence_events_total{event=\"join\"}"), "{metrics}");
}

/// Malformed, unknown, binary and oversized frames get an error envelope (or,
/// oversized, a close) — the server keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_errors_not_crashes() {
    let served = Served::start(config()).await;
    let mut bystander = served.connect("id=bystander").await;
    bystander.subscribe("room").await;
    bystander.wait_for("list", |_| true).await;

    let mut client = served.connect("id=x").await;
    for (frame, code) in [
        ("{not json", "bad-request"),
        (r#"{"type":"publish","topic":"room"}"#, "bad-request"),
        (r#"{"type":"subscribe","topic":""}"#, "bad-request"),
        (r#"{"type":"subscribe","topic":"a\u0007b"}"#, "bad-request"),
    ] {
        client.send_text(frame).await;
        let error = client
            .wait_for("error", |e| e["data"]["code"] == code && !e["data"]["message"].as_str().unwrap().is_empty())
            .await;
        client.seen.retain(|e| e != &error);
    }
    client.send_raw(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    client.wait_for("error", |e| e["data"]["message"].as_str().unwrap().contains("binary")).await;

    // Subscriptions are capped per connection.
    for topic in ["a", "b", "c", "d"] {
        client.subscribe(topic).await;
    }
    let refused = client.wait_for("error", |e| e["data"]["code"] == "too-many-subscriptions").await;
    assert_eq!(refused["topic"], "d");

    // Frames beyond the rate limit are refused.
    for _ in 0..40 {
        client.send_text(r#"{"type":"unsubscribe","topic":"zz"}"#).await;
    }
    client.wait_for("error", |e| e["data"]["code"] == "rate-limited").await;

    // An oversized frame closes that connection (1009), nobody else's.
    let mut big = served.connect("id=big").await;
    let huge = json!({"type": "subscribe", "topic": "x".repeat(20_000)}).to_string();
    let _ = big.send_raw(Message::Text(huge.into())).await;
    assert_eq!(big.wait_closed().await, Some(1009));

    let mut late = served.connect("id=late").await;
    late.subscribe("room").await;
    bystander.wait_for("join", |e| e["data"]["key"] == "late").await;
}

/// A client that stops answering pings is closed and leaves within
/// ping interval + pong timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_and_leave() {
    let mut config = config();
    config.limits.ping_interval = Duration::from_millis(200);
    config.limits.pong_timeout = Duration::from_millis(300);
    let served = Served::start(config).await;
    let mut watcher = served.connect("id=watcher").await;
    watcher.subscribe("room").await;
    // A raw TCP client completes the upgrade, subscribes, then never reads
    // again: no pongs, no frames.
    let mut silent = WsClient::connect(&served.url("/ws?id=silent")).await.unwrap();
    silent.subscribe("room").await;
    watcher.wait_for("join", |e| e["data"]["key"] == "silent").await;
    // Keep the watcher answering pings while we wait for the silent one to go.
    watcher.wait_for("leave", |e| e["data"]["key"] == "silent").await;
    drop(silent);
}

/// With the token-gate plugin: a bad token is accepted and closed with 4401
/// (a browser never sees an HTTP status on an upgrade, so a 401 would be
/// retried forever); a forbidden topic gets an error envelope and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_gates_upgrades_and_subscriptions() {
    let wasm = build_guest("examples/token-gate");
    let served = Served::start(ServerConfig { plugin: Some(PluginConfig::new(wasm)), ..config() }).await;
    let mut forged = WsClient::connect(&served.url("/ws?token=forged.token")).await.expect("upgrade accepted");
    assert_eq!(forged.wait_closed().await, Some(4401));
    let (status, _) = served.get("/readyz").await;
    assert_eq!(status, 200);

    let token = sign_token(
        json!({"id": "ada", "name": "Ada", "roles": ["team:red"], "exp": presence::backend::now_ms() + 60_000}),
    );
    let mut ada = served.connect(&format!("token={token}")).await;
    ada.subscribe("team:blue").await;
    let denied = ada.wait_for("error", |_| true).await;
    assert_eq!((denied["topic"].as_str(), denied["data"]["code"].as_str()), (Some("team:blue"), Some("denied")));
    assert_eq!(served.server.presence().count("team:blue").await.unwrap(), 0);
    ada.subscribe("team:red").await;
    let list = ada.wait_for("list", |_| true).await;
    assert_eq!(list["data"], json!([{"key": "ada", "data": {"id": "ada", "name": "Ada"}}]));
}

/// Two instances on one Redis: a client on each sees the other; stopping one
/// gracefully closes its sockets with 1001 and its users' leaves reach the
/// other instance at once (long before the TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_presence_and_shut_down_gracefully() {
    let redis = RedisServer::start();
    let mut slow_ttl = redis_config(&redis);
    slow_ttl.options.heartbeat = Duration::from_secs(30);
    slow_ttl.options.ttl = Duration::from_secs(90);
    let a = Served::start(slow_ttl.clone()).await;
    let b = Served::start(slow_ttl).await;
    let mut on_a = a.connect("id=ada").await;
    on_a.subscribe("room").await;
    on_a.wait_for("list", |_| true).await;
    let mut on_b: Vec<WsClient> = join_all((0..5).map(|i| b.connect_owned(format!("id=user{i}")))).await;
    for client in &mut on_b {
        client.subscribe("room").await;
    }
    on_a.wait_for("join", |e| e["data"]["key"] == "user4").await;

    b.stop().await;
    for client in &mut on_b {
        assert_eq!(client.wait_closed().await, Some(1001));
    }
    for i in 0..5 {
        on_a.wait_for("leave", |e| e["data"]["key"] == format!("user{i}")).await;
    }
    assert_eq!(a.server.presence().count("room").await.unwrap(), 1);

    // Readiness follows Redis.
    assert_eq!(a.get("/readyz").await.0, 200);
    let mut redis = redis;
    redis.kill();
    assert_eq!(a.get("/readyz").await.0, 503);
}

/// Secrets never reach a log through `{:?}`: the Redis password and the
/// session keys are redacted from the server configuration.
#[test]
fn debug_output_carries_no_secret() {
    let config = ServerConfig {
        redis: Some(RedisOptions::new("redis://ada:hunter2@127.0.0.1:6379/,redis://ada:hunter2@127.0.0.1:6380/")),
        session_keys: vec![b"an-unguessable-session-key-of-32-bytes".to_vec()],
        ..ServerConfig::default()
    };
    let shown = format!("{config:?} {:#?}", config.redis);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("unguessable") && !shown.contains("97, 110"), "{shown}");
    assert!(shown.contains("ada:***@"), "what is not secret stays: {shown}");
}

/// Without a plugin, the library serves the query-string identity to
/// loopback clients only, unless the embedder names it (the preflight here,
/// which authenticates as an upgrade does, from a client that is not on
/// loopback); and user data beyond its bound is refused, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_identity_is_for_loopback_unless_asked_for() {
    use axum::extract::connect_info::ConnectInfo;
    use tower::ServiceExt;
    let preflight = |server: &presence::server::PresenceServer, peer: &str, query: String| {
        let mut request = axum::http::Request::post(format!("/__ws/auth?{query}"))
            .header("x-requested-with", "svelte-adapter-uws")
            .body(axum::body::Body::empty())
            .unwrap();
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        server.router().oneshot(request)
    };
    let small = ServerLimits { max_user_data_bytes: 4096, ..config().limits };
    let strict = presence::server::PresenceServer::start(ServerConfig { limits: small, ..config() }).await.unwrap();
    let refused = preflight(&strict, "203.0.113.7:5000", "id=ada".into()).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body = axum::body::to_bytes(refused.into_body(), 1 << 16).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("loopback"), "{body:?}");
    let local = preflight(&strict, "127.0.0.1:5000", "id=ada".into()).await.unwrap();
    assert_eq!(local.status(), 204);
    let big = preflight(&strict, "127.0.0.1:5000", format!("id=ada&bio={}", "b".repeat(5000))).await.unwrap();
    assert_eq!(big.status(), 403);
    let body = axum::body::to_bytes(big.into_body(), 1 << 16).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("max_user_data_bytes"), "{body:?}");

    let open =
        presence::server::PresenceServer::start(ServerConfig { insecure_demo_auth: true, ..config() }).await.unwrap();
    assert_eq!(preflight(&open, "203.0.113.7:5000", "id=ada".into()).await.unwrap().status(), 204);
}
