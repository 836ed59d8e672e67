//! Recovery from what breaks presence silently, against real redis-server
//! processes: Redis losing data between two heartbeats, a tab closing around
//! the loss, a crashed instance whose holds went with the data, calls
//! cancelled halfway, skewed instance clocks, a slow Redis, an ACL that
//! refuses subscriptions, garbage in Redis, and a crashing platform.
//! Each test failed before the fix it guards.

use presence::engine::{Envelope, Platform};
use presence::{ConnId, Error, Hub, Presence};
use presence_tests::slow::SlowLeaves;
use presence_tests::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn flushall(server: &RedisServer) {
    let _: () = redis::cmd("FLUSHALL").query(&mut server.connection()).unwrap();
}

fn evalsha_calls(server: &RedisServer) -> u64 {
    command_stats::read(&mut server.connection()).evalsha
}

/// Redis loses its data and a new user joins before the next heartbeat: the
/// join re-creates this instance's hold, yet the heartbeat still finds the
/// five users it no longer holds and re-asserts them, pipelined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_holds_are_found_even_after_a_join_recreated_the_hold() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let a = Instance::start(&store, manual_ticks()).await;
    let b = Instance::start(&store, manual_ticks()).await;
    let mut watcher = b.watcher("room").await;
    let users: Vec<_> = (0..5).map(|i| a.connect(json!({"id": format!("u{i}")}))).collect();
    for user in &users {
        a.presence.join(user.id, "room").await.unwrap();
    }
    watcher.wait_for("join", |d| d["key"] == "u4").await;

    flushall(&server);
    let late = a.connect(json!({"id": "late"}));
    a.presence.join(late.id, "room").await.unwrap();
    let before = evalsha_calls(&server);
    a.presence.tick().await;
    // One tick call, then one pipelined batch re-asserting the six users this
    // instance believed it held: nothing per user in sequence.
    assert_eq!(evalsha_calls(&server) - before, 1 + 6);
    assert_eq!(a.presence.count("room").await.unwrap(), 6, "every live user is back after one tick");
    b.presence.tick().await;
    eventually("the watcher shows all six", || {
        let shown = watcher.view("room").unwrap();
        async move { shown.len() == 6 }
    })
    .await;
    for i in 0..5 {
        assert_eq!(
            watcher.count_for("join", &format!("u{i}")),
            1,
            "no second join for a listed user: {:#?}",
            watcher.seen
        );
    }
}

/// A tab closes right after Redis lost its data: nobody holds the user any
/// more, so no release announces its leave — yet every replica that showed
/// it must drop it, or it stays listed forever (a ghost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_closed_after_data_loss_leaves_no_ghost() {
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let a = Instance::start(&store, manual_ticks()).await;
    let b = Instance::start(&store, manual_ticks()).await;
    let mut watcher = b.watcher("room").await;
    let alice = a.connect(json!({"id": "alice"}));
    a.presence.join(alice.id, "room").await.unwrap();
    watcher.wait_for("join", |d| d["key"] == "alice").await;

    flushall(&server);
    a.close(&alice).await;
    watcher.wait_for("leave", |d| d["key"] == "alice").await;
    assert!(watcher.view("room").unwrap().is_empty());
}

/// Redis comes back from an older copy of its data (a snapshot taken before
/// the last joins): this instance's hold is in it, so a refresh alone sees
/// nothing wrong. The reconnect's resync has the next tick verify the topic,
/// which counts the holds, finds three missing and re-asserts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restored_from_an_older_copy_gets_every_live_user_back() {
    let mut server = RedisServer::start();
    let store = Store::redis(&server);
    let a = Instance::start(&store, manual_ticks()).await;
    let users: Vec<_> = (0..5).map(|i| a.connect(json!({"id": format!("u{i}")}))).collect();
    for user in &users[..2] {
        a.presence.join(user.id, "room").await.unwrap();
    }
    let _: () = redis::cmd("SAVE").query(&mut server.connection()).unwrap();
    for user in &users[2..] {
        a.presence.join(user.id, "room").await.unwrap();
    }
    a.presence.tick().await; // the joins' fresh hold is verified: nothing owed
    let resyncs = a.presence.stats().resyncs;

    server.restart(); // loads the snapshot: two users, and this instance's hold
    let users_key = presence::backend::redis::TopicKeys::new("presence", "room").users;
    let listed: u64 = redis::cmd("HLEN").arg(&users_key).query(&mut server.connection()).unwrap();
    assert_eq!(listed, 2, "the older copy lists two users");
    poll::until("the subscriber reconnects and re-reads the topic", DEADLINE, async || {
        poll::when(a.presence.stats().resyncs > resyncs, "no resync yet")
    })
    .await;
    a.presence.tick().await;
    assert_eq!(a.presence.count("room").await.unwrap(), 5, "every live user is back after one tick");
}

/// An instance crashes and Redis loses its data: no hold is left to expire,
/// so no sweep will ever announce the crashed instance's users. The other
/// instance's heartbeat finds its replica ahead of Redis and repairs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_users_leave_even_when_redis_lost_its_holds() {
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let b = Instance::start(&store, fast_options()).await;
    let mut watcher = b.watcher("room").await;
    {
        let crashed = Instance::start(&store, fast_options()).await;
        let user = crashed.connect(json!({"id": "gone"}));
        crashed.presence.join(user.id, "room").await.unwrap();
        watcher.wait_for("join", |d| d["key"] == "gone").await;
    } // dropped without any cleanup
    flushall(&server);
    watcher.wait_for("leave", |d| d["key"] == "gone").await;
    assert!(watcher.view("room").unwrap().is_empty());
}

/// A caller that stops waiting (a plugin hook cut off by its deadline, a
/// dropped request) does not cut an engine operation in half: a join whose
/// caller gave up while Redis was paused is still made, and a leave whose
/// caller gave up is still announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_still_finish() {
    let server = RedisServer::start();
    let store = Store::redis(&server).with_timeout(Duration::from_secs(3));
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let mut watcher = b.watcher("room").await;
    let mut alice = a.connect(json!({"id": "alice"}));
    a.presence.join(alice.id, "warmup").await.unwrap(); // the connection to Redis is up

    server.pause();
    let cut_off = tokio::time::timeout(Duration::from_millis(50), a.presence.join(alice.id, "room")).await;
    assert!(cut_off.is_err(), "the caller gave up while Redis was paused");
    server.resume();
    watcher.wait_for("join", |d| d["key"] == "alice").await;
    alice.wait_for("list", |l| l[0]["key"] == "alice").await;
    assert_eq!(a.presence.count("room").await.unwrap(), 1);

    server.pause();
    let cut_off = tokio::time::timeout(Duration::from_millis(50), a.presence.leave(alice.id, "room")).await;
    assert!(cut_off.is_err(), "the caller gave up while Redis was paused");
    server.resume();
    watcher.wait_for("leave", |d| d["key"] == "alice").await;
    assert_eq!(a.presence.count("room").await.unwrap(), 0);
}

/// Expiries are stamped and compared on Redis's clock: an instance whose
/// clock is a minute behind does not flap its users (they would expire on
/// arrival), and one whose clock is a minute ahead leaves no ghost for a
/// minute after it crashes. The skew itself is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_instance_clocks_neither_flap_nor_leave_ghosts() {
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let b = Instance::start(&store, fast_options()).await;
    let mut watcher = b.watcher("room").await;

    let behind = Arc::new(store.clone().with_clock_offset(-60_000).redis_backend().await);
    let slow_clock = Instance::on(behind.clone(), fast_options());
    let user = slow_clock.connect(json!({"id": "behind"}));
    slow_clock.presence.join(user.id, "room").await.unwrap();
    watcher.wait_for("join", |d| d["key"] == "behind").await;
    // Twenty of b's heartbeats (over three ttls) without a leave.
    for i in 0..20 {
        watcher.wait_for("heartbeat", |_| true).await;
        watcher.seen.retain(|e| e["event"] != "heartbeat");
        assert_eq!(watcher.count_for("leave", "behind"), 0, "flapped after {i} heartbeats");
    }
    let skew = behind.clock_skew();
    assert!((-61_000..=-59_000).contains(&skew), "the skew is measured: {skew} ms");

    let ahead = Instance::start(&store.clone().with_clock_offset(60_000), fast_options()).await;
    let user = ahead.connect(json!({"id": "ahead"}));
    ahead.presence.join(user.id, "room").await.unwrap();
    watcher.wait_for("join", |d| d["key"] == "ahead").await;
    drop(ahead); // crashed: no cleanup
    watcher.wait_for("leave", |d| d["key"] == "ahead").await; // within DEADLINE (10 s), not 60 s
    assert_eq!(watcher.count_for("leave", "behind"), 0);
}

/// The refresh runs on its own schedule: when leaving closed connections is
/// slow (a slow Redis), the next refresh is not delayed behind it, so live
/// users of the same instance are never swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_settle_does_not_delay_the_refresh() {
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let b = Instance::start(&store, fast_options()).await;
    let mut watcher = b.watcher("room").await;
    let slow = SlowLeaves { inner: store.backend().await, delay: Duration::from_millis(200) };
    let a = Instance::on(Arc::new(slow), fast_options());
    let alive = a.connect(json!({"id": "alive"}));
    a.presence.join(alive.id, "room").await.unwrap();
    watcher.wait_for("join", |d| d["key"] == "alive").await;
    // Ten connections vanish without a close: leaving them takes 2 s, over three ttls.
    let gone: Vec<_> = (0..10).map(|i| a.connect(json!({"id": format!("gone-{i}")}))).collect();
    for (i, c) in gone.iter().enumerate() {
        a.presence.join(c.id, &format!("other-{i}")).await.unwrap();
    }
    for c in &gone {
        a.hub.disconnect(c.id);
    }
    eventually("every vanished connection was left", || async {
        let mut left = 0;
        for i in 0..10 {
            left += usize::from(a.presence.count(&format!("other-{i}")).await.ok() == Some(0));
        }
        left == 10
    })
    .await;
    assert_eq!(watcher.count_for("leave", "alive"), 0, "a live user was swept while the heartbeat was busy");
    assert_eq!(keys(&b, "room").await, ["alive"]);
}

/// An ACL that lets the instance connect but refuses SUBSCRIBE must not make
/// the subscriber reconnect in a tight loop; readiness reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscribe_backs_off() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "nosub", "on", ">pw", "~*", "&*", "+@all", "-subscribe", "-psubscribe", "-ssubscribe"])
        .query(&mut con)
        .unwrap();
    let url = format!("redis://nosub:pw@127.0.0.1:{}/", server.port());
    let store =
        Store::Redis { url, prefix: "presence".into(), timeout: Duration::from_millis(500), clock_offset_ms: 0 };
    let a = Instance::start(&store, fast_options()).await;
    let connections = |con: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(con).unwrap();
        let line = info.lines().find(|l| l.starts_with("total_connections_received:")).unwrap();
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    };
    let user = a.connect(json!({"id": "u"}));
    let err = a.presence.join(user.id, "room").await.unwrap_err();
    assert!(matches!(err, Error::Deferred(_)), "watching the topic failed: {err}");
    assert!(a.presence.unready_reason().is_some_and(|r| r.contains("subscriber")), "readiness is red");
    let before = connections(&mut con);
    // A measuring window, not a wait for a condition: count reconnects in 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = connections(&mut con) - before;
    assert!(attempts <= 12, "{attempts} reconnects in 3 s: no backoff");
}

/// Garbage in Redis — member data that is not JSON, events that are not
/// ours — never panics a task or reaches clients as broken frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_is_ignored() {
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let a = Instance::start(&store, fast_options()).await;
    let mut con = server.connection();
    let room = presence::backend::redis::TopicKeys::new("presence", "room");
    let _: () = redis::cmd("HSET").arg(&room.users).arg("bad").arg("{not json").query(&mut con).unwrap();
    let _: () = redis::cmd("HSET").arg(&room.refs).arg("bad").arg(1).query(&mut con).unwrap();
    let mut watcher = a.watcher("room").await;
    let payloads: [&[u8]; 4] =
        [b"{not json", br#"{"i":"x","s":"NaN","e":"join"}"#, br#"{"i":"x","s":1,"e":"boom"}"#, b"\xff\xfe"];
    for payload in payloads {
        let _: i64 = redis::cmd("PUBLISH").arg(&room.channel).arg(payload).query(&mut con).unwrap();
    }
    let alice = a.connect(json!({"id": "alice"}));
    a.presence.join(alice.id, "room").await.unwrap();
    watcher.wait_for("join", |d| d["key"] == "alice").await;
    assert!(watcher.view("room").unwrap().contains("alice"));
    let health = a.presence.health();
    assert!(health.is_ok() && health.restarts == 0, "{health:?}");
}

/// A topic whose keys something else overwrote with another type fails its
/// own tick, not its neighbours': they share one script call, yet their holds
/// are still refreshed, so their users are not swept when the ttl runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_topic_does_not_stop_other_topics_heartbeats() {
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let a = Instance::start(&store, manual_ticks()).await;
    let alice = a.connect(json!({"id": "alice"}));
    for topic in ["before", "corrupted", "after"] {
        a.presence.join(alice.id, topic).await.unwrap();
    }
    let mut con = server.connection();
    let keys = |topic| presence::backend::redis::TopicKeys::new("presence", topic);
    let _: () = redis::cmd("SET").arg(&keys("corrupted").inst).arg("not a sorted set").query(&mut con).unwrap();
    let expiry = |con: &mut redis::Connection, topic| -> f64 {
        let reply: Vec<(String, f64)> =
            redis::cmd("ZRANGE").arg(&keys(topic).inst).arg(0).arg(-1).arg("WITHSCORES").query(con).unwrap();
        assert_eq!(reply.len(), 1, "one instance holds {topic}");
        reply[0].1
    };
    let before = [expiry(&mut con, "before"), expiry(&mut con, "after")];
    // Let Redis's clock move on, so a refresh shows in the expiry.
    let now_ms = |con: &mut redis::Connection| -> u64 {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
        secs * 1000 + micros / 1000
    };
    let started = now_ms(&mut con);
    poll::until_blocking("Redis's clock moves on", Duration::from_secs(3), || {
        if now_ms(&mut con) > started + 1 {
            Ok(())
        } else {
            Err("same millisecond")
        }
    });

    a.presence.tick().await;
    let after = [expiry(&mut con, "before"), expiry(&mut con, "after")];
    assert!(after[0] > before[0] && after[1] > before[1], "both neighbours refreshed: {before:?} -> {after:?}");
    assert_eq!(a.presence.count("after").await.unwrap(), 1);
    assert!(a.presence.health().is_ok(), "{:?}", a.presence.health());
}

/// A platform that panics once (a bug in an embedder's code) crashes the
/// event pump; the supervisor restarts it, counts it, and events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_task_is_restarted_and_counted() {
    struct PanicsOnce {
        hub: Arc<Hub>,
        armed: AtomicBool,
    }
    impl Platform for PanicsOnce {
        fn user_data(&self, conn: ConnId) -> Option<Value> {
            self.hub.user_data(conn)
        }
        fn subscribe(&self, conn: ConnId, topic: &str) {
            self.hub.subscribe(conn, topic)
        }
        fn unsubscribe(&self, conn: ConnId, topic: &str) {
            self.hub.unsubscribe(conn, topic)
        }
        fn send(&self, conn: ConnId, envelope: &Envelope) {
            self.hub.send(conn, envelope)
        }
        fn publish(&self, topic: &str, envelope: &Envelope) {
            if envelope.event == "join" && self.armed.swap(false, Ordering::SeqCst) {
                panic!("a bug in the platform");
            }
            self.hub.publish(topic, envelope)
        }
    }
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let hub = Hub::new();
    let platform = Arc::new(PanicsOnce { hub: hub.clone(), armed: AtomicBool::new(false) });
    let a = Presence::new(store.backend().await, platform.clone(), fast_options()).unwrap();
    let b = Instance::start(&store, fast_options()).await;
    let (watcher, mut rx) = hub.connect(json!({"id": "watcher"}), 1 << 20);
    a.sync(watcher, "room").await.unwrap();
    platform.armed.store(true, Ordering::SeqCst);
    let first = b.connect(json!({"id": "first"}));
    b.presence.join(first.id, "room").await.unwrap(); // its event crashes a's pump
    eventually("the crash is counted", || {
        let restarts = a.health().restarts;
        async move { restarts == 1 }
    })
    .await;
    let second = b.connect(json!({"id": "second"}));
    b.presence.join(second.id, "room").await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, rx.recv()).await.expect("events flow again").unwrap();
        if frame.contains(r#""key":"second""#) {
            break;
        }
    }
    eventually("healthy again", || {
        let ok = a.health().is_ok();
        async move { ok }
    })
    .await;
}
