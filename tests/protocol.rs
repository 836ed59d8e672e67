//! Every client generation against real `presenced` servers, with a protocol
//! client written from the specification (`tests/support/ws.rs`): current
//! (0.5) and legacy (0.3/0.4) clients on one topic across two instances,
//! acks and each denial reason, batches, resume, coalesced diffs, close
//! codes, the application keepalive and the auth preflight.

use presence::plugin::PluginConfig;
use presence::server::{ServerConfig, ServerLimits};
use presence::Options;
use presence_tests::guests::build_guest;
use presence_tests::ws::{http_delete, http_post, Served, WsClient};
use presence_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

fn config() -> ServerConfig {
    ServerConfig { options: fast_options(), ..ServerConfig::default() }
}

fn with_limits(limits: ServerLimits) -> ServerConfig {
    ServerConfig { limits, ..config() }
}

async fn current(served: &Served, query: &str) -> WsClient {
    let mut client = served.connect(query).await;
    client.hello(&["batch"]).await;
    client
}

fn is(kind: &'static str, topic: &'static str) -> impl Fn(&Value) -> bool {
    move |f| f["type"] == kind && f["topic"] == topic
}

/// A legacy client on one instance and a current one on the other, on one
/// Redis: each sees the other, each in its own events; the current one gets
/// a `welcome`, an ack, a `presence_state` and then `presence_diff`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_generations_see_each_other_across_instances() {
    let redis = RedisServer::start();
    both_generations_across_instances_on(&redis.url()).await;
}

/// The same, with both instances on a three-master Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_generations_see_each_other_across_instances_on_a_cluster() {
    let urls = tokio::task::spawn_blocking(shared_cluster).await.unwrap();
    both_generations_across_instances_on(urls).await;
}

async fn both_generations_across_instances_on(redis_url: &str) {
    let mut redis = presence::backend::redis::RedisOptions::new(redis_url);
    redis.prefix = format!("t{:08x}", rand::random::<u32>());
    let shared = ServerConfig { redis: Some(redis), ..config() };
    let a = Served::start(shared.clone()).await;
    let b = Served::start(shared).await;

    let mut legacy = a.connect("id=lea&name=Lea").await;
    legacy.subscribe("room").await;
    legacy.wait_for("list", |_| true).await;

    let mut now = current(&b, "id=cy&name=Cy").await;
    let welcome = now.wait_frame("welcome", |f| f["type"] == "welcome").await;
    assert!(welcome["sessionId"].as_str().is_some_and(|s| !s.is_empty()), "{welcome}");
    now.subscribe_ref("room", 1).await;
    let ack = now.wait_frame("subscribed", is("subscribed", "room")).await;
    assert_eq!(ack["ref"], 1);
    let state = now.wait_frame("presence_state", |f| f["event"] == "presence_state").await;
    assert_eq!(state["topic"], "__presence:room");
    assert_eq!(state["data"]["lea"], json!({"id": "lea", "name": "Lea"}), "{state}");
    assert_eq!(state["data"]["cy"], json!({"id": "cy", "name": "Cy"}), "{state}");
    assert!(now.seen.iter().all(|f| f["event"] != "list" && f["event"] != "join"), "no legacy events");

    legacy.wait_for("join", |e| e["data"]["key"] == "cy").await;
    assert!(legacy.seen.iter().all(|f| f["event"] != "presence_diff"), "no current events for legacy");

    let mut late = a.connect("id=max").await;
    late.subscribe("room").await;
    now.wait_frame("diff with max", |f| {
        f["event"] == "presence_diff" && f["data"]["joins"].get("max").is_some() && f["seq"].as_u64().is_some()
    })
    .await;
    legacy.close().await;
    now.wait_frame("diff with lea leaving", |f| {
        f["event"] == "presence_diff" && f["data"]["leaves"].get("lea").is_some()
    })
    .await;
    let view = now.presence_view("room");
    assert_eq!(view.keys().collect::<Vec<_>>(), ["cy", "max"]);
}

/// Each denial reason reaches a current client as `subscribe-denied` with
/// the frame's ref, and nothing of a denied subscribe stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_carry_a_reason_the_client_can_act_on() {
    let wasm = build_guest("tests/guests/hostile");
    let limits = ServerLimits { max_subscriptions: 2, ..ServerLimits::default() };
    let served = Served::start(ServerConfig { plugin: Some(PluginConfig::new(wasm)), ..with_limits(limits) }).await;
    let mut client = current(&served, "id=ada").await;
    let cases = [
        ("__presence:room", "INVALID_TOPIC"),
        ("", "INVALID_TOPIC"),
        ("word-room", "ROOM_FULL"),
        ("prose-room", "FORBIDDEN"),
        ("trap-room", "INTERNAL_ERROR"),
    ];
    for (i, (topic, reason)) in cases.iter().enumerate() {
        client.subscribe_ref(topic, i as u64).await;
        let denied = client.wait_frame("a denial", |f| f["type"] == "subscribe-denied" && f["ref"] == i as u64).await;
        assert_eq!((denied["topic"].as_str(), denied["reason"].as_str()), (Some(*topic), Some(*reason)));
    }
    client.subscribe_ref("one", 10).await;
    client.subscribe_ref("two", 11).await;
    client.subscribe_ref("three", 12).await;
    client.wait_frame("ack 11", |f| f["type"] == "subscribed" && f["ref"] == 11).await;
    let capped = client.wait_frame("a cap denial", |f| f["ref"] == 12).await;
    assert_eq!(capped["reason"], "RATE_LIMITED");
    assert_eq!(served.server.presence().count("word-room").await.unwrap(), 0);
    assert_eq!(served.server.hub().subscribers("word-room"), 0);
    assert_eq!(served.server.hub().subscribers("trap-room"), 0, "no subscription left behind");
}

/// A `subscribe-batch` is processed up to 256 topics, one ack each with the
/// batch's ref; without a ref (a 0.4 client) it subscribes and acks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_batch_acks_each_topic_up_to_256() {
    let limits = ServerLimits { max_subscriptions: 1000, ..ServerLimits::default() };
    let served = Served::start(with_limits(limits)).await;
    let mut client = current(&served, "id=ada").await;
    let topics: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
    client.subscribe_batch(&topics, Some(9)).await;
    client.send_text(r#"{"type":"resume","sessionId":"x","lastSeenSeqs":{}}"#).await;
    client.wait_frame("resumed", |f| f["type"] == "resumed").await; // frames are handled in order
    let acks = client.of_type("subscribed");
    assert_eq!(acks.len(), 256);
    assert!(acks.iter().all(|a| a["ref"] == 9));
    assert_eq!(served.server.presence().count("t255").await.unwrap(), 1);
    assert_eq!(served.server.presence().count("t256").await.unwrap(), 0);

    // A 0.4 client: no hello, subscribe-batch without a ref, legacy events.
    let mut legacy = served.connect("id=old").await;
    legacy.subscribe_batch(&["t0".to_owned(), "t1".to_owned()], None).await;
    legacy.wait_for("list", |l| l["topic"] == "__presence:t1").await;
    assert!(legacy.of_type("subscribed").is_empty());
}

/// `resume` is always answered; a client that reconnects and subscribes
/// again gets a fresh `presence_state` (its store is not cleared on close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_and_resubscribe_get_a_fresh_state() {
    let served = Served::start(config()).await;
    let mut bob = served.connect("id=bob").await;
    bob.subscribe("room").await;
    bob.wait_for("list", |_| true).await;

    let mut first = current(&served, "id=cy").await;
    first.subscribe_ref("room", 1).await;
    first.wait_frame("state", |f| f["event"] == "presence_state").await;
    first.close().await;
    bob.close().await;

    let mut again = current(&served, "id=cy").await;
    again.send_text(r#"{"type":"resume","sessionId":"whatever","lastSeenSeqs":{"room":3}}"#).await;
    again.wait_frame("resumed", |f| f["type"] == "resumed").await;
    again.subscribe_batch(&["room".to_owned()], Some(2)).await;
    let state = again.wait_frame("fresh state", |f| f["event"] == "presence_state").await;
    assert_eq!(state["data"], json!({"cy": {"id": "cy"}}), "bob is gone: {state}");
    // The presence store asks for a snapshot on every open, too.
    again.send_text(r#"{"type":"presence-snapshot","topic":"room"}"#).await;
    again.send_text(r#"{"type":"resume"}"#).await; // frames are handled in order
    poll::until("a second `resumed`", DEADLINE, async || {
        again.drain_for(Duration::from_millis(50)).await;
        poll::when(again.of_type("resumed").len() >= 2, again.of_type("resumed").len())
    })
    .await;
    let states = again.seen.iter().filter(|f| f["event"] == "presence_state").count();
    assert_eq!(states, 2, "the snapshot request was answered: {:#?}", again.seen);
}

/// 1,000 users joining one topic in a burst reach a current subscriber as
/// the full set in a few dozen frames, not 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_is_coalesced_into_few_frames() {
    let served = Served::start(config()).await;
    let mut watcher = current(&served, "id=watcher").await;
    watcher.subscribe_ref("burst", 1).await;
    watcher.wait_frame("state", |f| f["event"] == "presence_state").await;
    let before = watcher.seen.len();
    let presence = served.server.presence().clone();
    let hub = served.server.hub().clone();
    let joins = (0..1000).map(|i| {
        // Each joiner also receives the others' legacy joins: room for all of them.
        let (conn, rx) = hub.connect(json!({"id": format!("u{i}")}), 1 << 20);
        let presence = presence.clone();
        async move {
            presence.join(conn, "burst").await.unwrap();
            rx
        }
    });
    let _receivers = futures::future::join_all(joins).await;
    poll::until("all 1,001 users shown", DEADLINE, async || {
        watcher.drain_for(Duration::from_millis(50)).await;
        let shown = watcher.presence_view("burst").len();
        poll::when(shown >= 1001, shown)
    })
    .await;
    let frames = watcher.seen.len() - before;
    println!("1,000 joins reached a current subscriber in {frames} frames");
    assert!(frames <= 40, "{frames} frames for 1,000 joins");
}

/// A count-only topic, seen by a current client: beyond the threshold its
/// presence is an empty `presence_state`, then `count` events; back under
/// it, the full `presence_state` and diffs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_only_topic_reaches_current_clients_as_counts() {
    let options = Options {
        count_only: [("big:".to_owned(), 5)].into(),
        count_window: Duration::from_millis(20),
        ..fast_options()
    };
    let served = Served::start(ServerConfig { options, ..config() }).await;
    let mut watcher = current(&served, "id=watcher").await;
    watcher.subscribe_ref("big:hall", 1).await;
    watcher.wait_frame("state", |f| f["event"] == "presence_state").await;
    let (presence, hub) = (served.server.presence().clone(), served.server.hub().clone());
    let mut users = Vec::new();
    for i in 0..20 {
        let (conn, rx) = hub.connect(json!({"id": format!("u{i}")}), 1 << 20);
        presence.join(conn, "big:hall").await.unwrap();
        users.push((conn, rx));
    }
    let count = watcher.wait_frame("count 21", |f| f["event"] == "count" && f["data"] == 21).await;
    assert_eq!(count["topic"], "__presence:big:hall");
    assert!(watcher.presence_view("big:hall").is_empty(), "the members were replaced by the count");
    for (conn, _) in users.drain(4..) {
        presence.leave_all(conn).await.unwrap();
        hub.disconnect(conn);
    }
    poll::until("the members are shown again", DEADLINE, async || {
        watcher.drain_for(Duration::from_millis(20)).await;
        let view = watcher.presence_view("big:hall");
        poll::when(view.len() == 5, view)
    })
    .await;
}

/// Close codes a client acts on: an upgrade the plugin refuses is accepted
/// and closed 4401 or 4403 with the plugin's reason (never an HTTP status a
/// browser retries forever); a current client that floods is closed 4429;
/// unknown frames are ignored, not answered with a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_match_what_clients_do_with_them() {
    let wasm = build_guest("tests/guests/hostile");
    let limits = ServerLimits { messages_per_second: 5, ..ServerLimits::default() };
    let served = Served::start(ServerConfig { plugin: Some(PluginConfig::new(wasm)), ..with_limits(limits) }).await;
    for (status, code) in [(401, 4401), (403, 4403), (429, 4429)] {
        let mut refused = served.connect(&format!("id=x&deny={status}")).await;
        assert_eq!(refused.wait_closed().await, Some(code), "status {status}");
    }
    // A denial that is no HTTP error, or a trap: the plugin failed. The
    // unauthenticated client learns only that (1011), never the trap text.
    for query in ["id=x&deny=200", "id=x&deny=0", "id=x&trap=1"] {
        let mut refused = served.connect(query).await;
        assert_eq!(refused.wait_closed().await, Some(1011), "{query}");
        assert_eq!(refused.close_reason.as_deref(), Some("authentication unavailable"), "{query}");
    }

    let mut client = current(&served, "id=ok").await;
    client.send_text(r#"{"type":"from-the-future","x":1}"#).await;
    client.send_text(r#"{"type":"resume"}"#).await;
    client.wait_frame("resumed", |f| f["type"] == "resumed").await;
    assert!(client.of_type("error").is_empty() && client.seen.iter().all(|f| f["event"] != "error"));
    let (_, metrics) = served.get("/metrics").await;
    assert!(metrics.contains("presence_frames_unknown_total 1"), "{metrics}");

    for _ in 0..40 {
        client.send_text(r#"{"type":"reply","ref":1,"data":null}"#).await;
    }
    assert_eq!(client.wait_closed().await, Some(4429));
}

/// A quiet connection still gets an application frame every ping interval
/// (browser code cannot see pings; current clients drop a silent socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_connections_get_keepalive_frames() {
    let limits = ServerLimits { ping_interval: Duration::from_millis(200), ..ServerLimits::default() };
    let served = Served::start(with_limits(limits)).await;
    let mut quiet = current(&served, "id=q").await;
    quiet.wait_frame("keepalive", |f| f["type"] == "ping").await;
}

/// The auth preflight: 204 and a signed session cookie that an upgrade on
/// another instance (sharing the key) accepts without authenticating again;
/// refusals answer the plugin's status; a request without the client's
/// header is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_preflight_session_works_on_every_instance() {
    let key = vec![vec![42; 32]];
    let a = Served::start(ServerConfig { session_keys: key.clone(), ..config() }).await;
    let b = Served::start(ServerConfig { session_keys: key, ..config() }).await;
    let header = [("x-requested-with", "svelte-adapter-uws")];
    let (status, response) = http_post(a.addr, "/__ws/auth?id=ada&name=Ada", &header).await;
    assert_eq!(status, 204, "{response}");
    let set_cookie = response.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite"), "{set_cookie}");
    let cookie = set_cookie.split_once(':').unwrap().1.trim().split(';').next().unwrap();

    let mut client = WsClient::connect_with_cookie(&b.url("/ws"), cookie).await.unwrap();
    client.hello(&[]).await;
    client.subscribe_ref("room", 1).await;
    let state = client.wait_frame("state", |f| f["event"] == "presence_state").await;
    assert_eq!(state["data"], json!({"ada": {"id": "ada", "name": "Ada"}}));

    let (status, _) = http_post(a.addr, "/__ws/auth?id=ada", &[]).await;
    assert_eq!(status, 403, "the client's header is required");
    let wasm = build_guest("tests/guests/hostile");
    let gated = Served::start(ServerConfig { plugin: Some(PluginConfig::new(wasm)), ..config() }).await;
    let (status, _) = http_post(gated.addr, "/__ws/auth?deny=401", &header).await;
    assert_eq!(status, 401);
    let (status, _) = http_post(gated.addr, "/__ws/auth?id=ok", &header).await;
    assert_eq!(status, 204);
}

/// A subscribe while Redis is unreachable is acknowledged `subscribed`,
/// through a plugin's hook as through the built-in one: the join is kept and
/// made once Redis is back, and the client then gets its `presence_state`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_join_is_acknowledged_and_made_through_a_plugin() {
    let mut redis = RedisServer::start();
    let wasm = build_guest("tests/guests/defaults");
    let served = Served::start(ServerConfig {
        redis: Some(presence::backend::redis::RedisOptions::new(redis.url())),
        plugin: Some(PluginConfig::new(wasm)),
        ..config()
    })
    .await;
    let mut client = current(&served, "id=ada").await;
    client.wait_frame("welcome", |f| f["type"] == "welcome").await;
    redis.kill();
    client.subscribe_ref("room", 1).await;
    let ack = client.wait_frame("an ack", |f| f["ref"] == 1).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    redis.restart();
    let state = client.wait_frame("state", |f| f["event"] == "presence_state").await;
    assert_eq!(state["data"], json!({"ada": {"id": "ada"}}), "{state}");
}

/// A join over a cap reaches a current client as a denial with the cap's
/// word (`TOPIC_FULL`), and nothing of the refused subscribe stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_topic_is_denied_with_its_word() {
    let options = Options { max_members_per_topic: 1, ..fast_options() };
    let served = Served::start(ServerConfig { options, ..ServerConfig::default() }).await;
    let mut first = current(&served, "id=first").await;
    first.subscribe_ref("room", 1).await;
    first.wait_frame("subscribed", |f| f["type"] == "subscribed").await;
    let mut second = current(&served, "id=second").await;
    second.subscribe_ref("room", 7).await;
    let denied = second.wait_frame("denial", |f| f["type"] == "subscribe-denied").await;
    assert_eq!(denied, json!({"type": "subscribe-denied", "topic": "room", "ref": 7, "reason": "TOPIC_FULL"}));
    assert_eq!(served.server.hub().subscribers("room"), 1, "the refused subscribe left no subscription");
    assert_eq!(served.server.presence().count("room").await.unwrap(), 1);
    // Once there is room, the same client gets in.
    first.close().await;
    second.subscribe_ref("room", 8).await;
    second.wait_frame("subscribed", |f| f["type"] == "subscribed" && f["ref"] == 8).await;
}

/// Two servers on one Redis, heartbeat 1 s. Redis is stopped (SIGSTOP) or
/// killed for three seconds while tabs of both generations open, on both
/// servers, and a legacy watcher starts watching `__presence:room`: every
/// current tab is acknowledged `subscribed`, and shortly after Redis is back
/// every tab, the watcher and both servers show exactly the open tabs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_opened_during_an_outage_are_listed_once_redis_is_back() {
    use presence_tests::fleet::{converge, Generation, Tab};
    for fault in ["stalled", "restarted"] {
        let mut redis = RedisServer::start();
        let options = Options { heartbeat: Duration::from_secs(1), ttl: Duration::from_secs(8), ..fast_options() };
        let config = ServerConfig {
            redis: Some(presence::backend::redis::RedisOptions::new(redis.url())),
            options,
            ..ServerConfig::default()
        };
        let (a, b) = (Served::start(config.clone()).await, Served::start(config).await);
        let topics = vec!["room".to_owned(), "hall".to_owned()];
        let mut tabs = vec![
            Tab::open(&a, 0, Generation::Current, "before-a", "room").await,
            Tab::open(&b, 1, Generation::Legacy, "before-b", "room").await,
        ];
        let mut watcher = b.connect("id=watcher").await;
        match fault {
            "stalled" => redis.pause(),
            _ => redis.kill(),
        }
        let started = std::time::Instant::now();
        let mut n = 0;
        for (served, server) in [(&a, 0), (&b, 1)] {
            for generation in [Generation::Current, Generation::Legacy] {
                for topic in &topics {
                    n += 1;
                    tabs.push(Tab::open(served, server, generation, &format!("during-{n}"), topic).await);
                }
            }
        }
        watcher.subscribe("__presence:room").await;
        let opened = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(opened)).await;
        match fault {
            "stalled" => redis.resume(),
            _ => redis.restart(),
        }
        let back = std::time::Instant::now();
        let settled = converge(&[&a, &b], &mut tabs, &topics, DEADLINE).await;
        let want: std::collections::BTreeSet<String> =
            tabs.iter().filter(|t| t.topic == "room").map(|t| t.user.clone()).collect();
        poll::until("the watcher lists every tab on room", DEADLINE, async || {
            watcher.drain_for(Duration::from_millis(5)).await;
            let shown = watcher.legacy_view("room")?;
            poll::when(shown == want, shown)
        })
        .await;
        println!(
            "Redis {fault} 3 s: {} tabs opened in {opened:?} meanwhile, all acknowledged; \
             every tab and server right {settled:?} after it was back (watcher {:?})",
            n,
            back.elapsed()
        );
    }
}

/// A join kept while Redis was down, that Redis then refuses (the topic
/// filled up meanwhile), closes the connection with 1013 — a code clients
/// retry — instead of leaving it open and unlisted; on its next try the
/// client hears why (`TOPIC_FULL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_join_refused_later_closes_the_socket_for_a_retry() {
    let mut redis = RedisServer::start();
    let options = Options { max_members_per_topic: 1, ..fast_options() };
    let config = ServerConfig {
        redis: Some(presence::backend::redis::RedisOptions::new(redis.url())),
        options,
        ..ServerConfig::default()
    };
    let (a, b) = (Served::start(config.clone()).await, Served::start(config).await);
    let mut early = current(&b, "id=early").await;
    early.subscribe_ref("hall", 1).await;
    early.wait_frame("subscribed", |f| f["type"] == "subscribed").await;
    redis.kill();
    let mut late = current(&a, "id=late").await;
    late.subscribe_ref("room", 2).await;
    assert_eq!(late.wait_frame("an ack", |f| f["ref"] == 2).await["type"], "subscribed");
    redis.restart();
    // The topic fills up (b's join is made first) before a's kept join is.
    let mut first = current(&b, "id=first").await;
    first.subscribe_ref("room", 3).await;
    first.wait_frame("an ack", |f| f["ref"] == 3).await;
    let code = late.wait_closed().await;
    let (first_in, late_in) = (first.presence_view("room").contains_key("first"), code.is_some());
    assert!(late_in, "the kept join's socket was closed");
    if first_in {
        assert_eq!(code, Some(1013), "{:?}", late.close_reason);
        assert!(late.close_reason.as_deref().is_some_and(|r| r.contains("TOPIC_FULL")), "{:?}", late.close_reason);
        let mut retry = current(&a, "id=late").await;
        retry.subscribe_ref("room", 4).await;
        let denied = retry.wait_frame("a denial", |f| f["ref"] == 4).await;
        assert_eq!(denied["reason"], "TOPIC_FULL", "{denied}");
    }
}

/// A plugin's subscribe hook whose join meets a stalled Redis (calls that
/// would wait longer than the hook's deadline) is not cut off: the join is
/// kept, the client is acknowledged `subscribed`, not denied, and it gets
/// its `presence_state` once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_meets_a_stalled_redis_keeps_the_join() {
    let redis = RedisServer::start();
    let mut plugin = PluginConfig::new(build_guest("tests/guests/defaults"));
    plugin.limits.hook_deadline = Duration::from_millis(800);
    let mut options = presence::backend::redis::RedisOptions::new(redis.url());
    options.timeout = Duration::from_secs(3);
    let served = Served::start(ServerConfig { redis: Some(options), plugin: Some(plugin), ..config() }).await;
    let mut client = current(&served, "id=ada").await;
    client.wait_frame("welcome", |f| f["type"] == "welcome").await;
    redis.pause();
    let started = std::time::Instant::now();
    client.subscribe_ref("room", 1).await;
    let ack = client.wait_frame("an ack", |f| f["ref"] == 1).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered within the hook's deadline: {:?}", started.elapsed());
    redis.resume();
    client.wait_frame("state", |f| f["event"] == "presence_state" || f["type"] == "batch").await;
    poll::until("ada is listed", DEADLINE, async || {
        client.drain_for(Duration::from_millis(5)).await;
        let view = client.presence_view("room");
        poll::when(view.contains_key("ada"), view)
    })
    .await;
}

/// A session from the auth preflight lives no longer than the token it came
/// from (the token gate's tokens say when they expire): accepted at once,
/// refused (4401) once the token is gone, whatever the session ttl. Logout
/// ends it in the browser; `Secure` is set when asked for or behind HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_with_its_token_and_logs_out() {
    let wasm = build_guest("examples/token-gate");
    let served = Served::start(ServerConfig {
        plugin: Some(PluginConfig::new(wasm)),
        cookie_secure: true,
        session_keys: vec![vec![9; 32]],
        ..config()
    })
    .await;
    let exp = presence::backend::now_ms() + 2_000;
    let token = sign_token(json!({"id": "ada", "name": "Ada", "roles": ["admin"], "exp": exp}));
    let header = [("x-requested-with", "svelte-adapter-uws")];
    let (status, response) = http_post(served.addr, &format!("/__ws/auth?token={token}"), &header).await;
    assert_eq!(status, 204, "{response}");
    let set_cookie = response.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap();
    let max_age: u64 = set_cookie.split("Max-Age=").nth(1).unwrap().split(';').next().unwrap().trim().parse().unwrap();
    assert!(max_age <= 2, "the cookie lives as long as the token: {set_cookie}");
    assert!(set_cookie.contains("Secure") && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_owned();
    let url = served.url("/ws");
    let mut fresh = WsClient::connect_with_cookie(&url, &cookie).await.unwrap();
    fresh.wait_frame("welcome", |f| f["type"] == "welcome").await;
    poll::until("the token expires", DEADLINE, async || {
        let now = presence::backend::now_ms();
        poll::when(now > exp + 1000, now)
    })
    .await;
    let mut late = WsClient::connect_with_cookie(&url, &cookie).await.unwrap();
    assert_eq!(late.wait_closed().await, Some(4401), "a session past its token is not accepted");

    let (status, response) = http_delete(served.addr, "/__ws/auth", &header).await;
    assert_eq!(status, 204);
    assert!(response.contains("presence_session=;") && response.contains("Max-Age=0"), "{response}");
}
