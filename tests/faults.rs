//! Unhappy paths against real redis-server processes: Redis killed, restarted
//! empty or paused mid-run; an instance process killed with SIGKILL; Redis
//! down during a join; a storm of concurrent joins and leaves.

use presence::Error;
use presence_tests::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Redis restarted empty: every live user is back within a heartbeat or two,
/// announced again, and the engine keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gets_every_live_user_back() {
    let mut server = RedisServer::start();
    let store = Store::redis(&server);
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let mut watcher = b.connect(json!({"id": "watcher"}));
    b.presence.join(watcher.id, "room").await.unwrap();
    let users: Vec<_> = (0..20).map(|i| a.connect(json!({"id": format!("u{i}")}))).collect();
    for user in &users {
        a.presence.join(user.id, "room").await.unwrap();
    }
    assert_eq!(a.presence.count("room").await.unwrap(), 21);

    server.restart();
    eventually("all 21 users present again", || async { a.presence.count("room").await.ok() == Some(21) }).await;
    // The watcher shows every user again, and never got a second join for one it listed.
    eventually("the watcher shows all 21", || {
        let shown = watcher.view("room").unwrap();
        async move { shown.len() == 21 }
    })
    .await;
    let late = a.connect(json!({"id": "late"}));
    eventually("joins work again", || async { a.presence.join(late.id, "room").await.is_ok() }).await;
    watcher.wait_for("join", |d| d["key"] == "late").await;
    assert!(watcher.view("room").unwrap().contains("late"));
}

/// Redis stopped with SIGSTOP: operations fail with a timeout instead of
/// hanging; once it resumes, everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_times_out_instead_of_hanging() {
    let server = RedisServer::start();
    let a = Instance::start(&Store::redis(&server), fast_options()).await;
    let alice = a.connect(json!({"id": "alice"}));
    let bob = a.connect(json!({"id": "bob"}));
    a.presence.join(alice.id, "room").await.unwrap();

    server.pause();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), a.presence.join(bob.id, "room"))
        .await
        .expect("join returned instead of hanging")
        .unwrap_err();
    assert!(matches!(err, Error::Deferred(_)), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    let err =
        tokio::time::timeout(Duration::from_secs(5), a.presence.count("room")).await.expect("bounded").unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.resume();

    eventually("joins work after resume", || async { a.presence.join(bob.id, "room").await.is_ok() }).await;
    eventually("both present", || async { a.presence.count("room").await.ok() == Some(2) }).await;
}

/// A join while Redis is down is not a lost user: the caller learns it was
/// deferred, the connection stays wanted, and once Redis is back the
/// heartbeat makes the join — announced once, and the joiner gets its list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_while_redis_is_down_is_made_when_it_returns() {
    let mut server = RedisServer::start();
    let store = Store::redis(&server);
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let mut watcher = b.watcher("room").await;
    let mut alice = a.connect(json!({"id": "alice"}));

    server.kill();
    let err = a.presence.join(alice.id, "room").await.unwrap_err();
    assert!(matches!(err, Error::Deferred(_)), "{err}");
    assert!(err.to_string().contains("kept"), "the error says the join is kept: {err}");
    server.restart();

    watcher.wait_for("join", |d| d["key"] == "alice").await;
    let list = alice.wait_for("list", |_| true).await;
    assert_eq!(list["data"][0]["key"], "alice", "the joiner is listed: {list}");
    eventually("alice counted", || async { a.presence.count("room").await.ok() == Some(1) }).await;
    for _ in 0..3 {
        a.presence.tick().await;
    }
    assert_eq!(watcher.count_for("join", "alice"), 1);
    assert_eq!(watcher.view("room").unwrap(), ["alice".to_owned()].into());

    // Closing the tab now leaves, as usual.
    a.close(&alice).await;
    watcher.wait_for("leave", |d| d["key"] == "alice").await;
}

/// An instance running as its own process is killed with SIGKILL: its users'
/// `leave` reaches the other instance within ttl + one sweep, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_process_users_leave_within_ttl() {
    let server = RedisServer::start();
    let a = Instance::start(&Store::redis(&server), fast_options()).await;
    let mut watcher = a.connect(json!({"id": "watcher"}));
    a.presence.join(watcher.id, "room").await.unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_presence-instance"))
        .args([&server.url(), "room", "5", "100", "600"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn presence-instance");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    for i in 0..5 {
        watcher.wait_for("join", |d| d["key"] == format!("crashed-{i}")).await;
    }

    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    let killed_at = std::time::Instant::now();
    for i in 0..5 {
        watcher.wait_for("leave", |d| d["key"] == format!("crashed-{i}")).await;
    }
    // ttl (600 ms) + one heartbeat (100 ms), with slack for a loaded machine.
    assert!(killed_at.elapsed() < Duration::from_secs(3), "leaves took {:?}", killed_at.elapsed());
    a.presence.tick().await;
    for i in 0..5 {
        assert_eq!(watcher.count_for("leave", &format!("crashed-{i}")), 1);
    }
    assert_eq!(keys(&a, "room").await, ["watcher"]);
}

/// 1,000 users × 3 tabs × 2 instances join and leave concurrently: the final
/// state is exact and every user got exactly one `join` and one `leave`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_tabs_on_two_instances_is_exact() {
    let server = RedisServer::start();
    // 6,000 joins in flight at once on a debug build: allow each its time.
    let store = Store::redis(&server).with_timeout(Duration::from_secs(10));
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let mut watcher = a.watcher("storm").await;

    const USERS: usize = 1000;
    let tabs: Vec<_> = (0..USERS)
        .flat_map(|u| (0..3).map(move |t| (u, t)))
        .flat_map(|(u, t)| [(0, u, t), (1, u, t)])
        .map(|(i, u, _)| {
            let instance = if i == 0 { &a } else { &b };
            (i, instance.connect(json!({"id": format!("user-{u}")})))
        })
        .collect();
    let instance = |i: usize| if i == 0 { &a } else { &b };
    let joins = tabs.iter().map(|(i, c)| instance(*i).presence.join(c.id, "storm"));
    for result in futures::future::join_all(joins).await {
        result.unwrap();
    }
    assert_eq!(a.presence.count("storm").await.unwrap(), USERS as u64);

    let leaves = tabs.iter().map(|(i, c)| instance(*i).close(c));
    futures::future::join_all(leaves).await;
    assert_eq!(a.presence.count("storm").await.unwrap(), 0);
    eventually("every leave seen", || {
        let n = watcher.events("leave").len();
        async move { n >= USERS }
    })
    .await;
    a.presence.tick().await;
    let joins = watcher.events("join");
    let leaves = watcher.events("leave");
    assert_eq!(joins.len(), USERS, "one join per user");
    assert_eq!(leaves.len(), USERS, "one leave per user");
    let mut joined: Vec<_> = joins.iter().map(|e| e["data"]["key"].as_str().unwrap().to_owned()).collect();
    joined.sort();
    joined.dedup();
    assert_eq!(joined.len(), USERS);
    let mut con = server.connection();
    let left_over: Vec<String> = redis::cmd("KEYS")
        .arg(format!(
            "{}*",
            presence::backend::redis::TopicKeys::new("presence", "storm").users.trim_end_matches("users")
        ))
        .query(&mut con)
        .unwrap();
    let mut left_over: Vec<_> =
        left_over.into_iter().filter(|k| !k.ends_with(":seq") && !k.ends_with(":inst")).collect();
    left_over.sort();
    let hashes: Vec<(String, usize)> =
        left_over.iter().map(|k| (k.clone(), redis::cmd("EXISTS").arg(k).query::<usize>(&mut con).unwrap())).collect();
    assert!(hashes.is_empty(), "no users, refs or holds left: {hashes:?}");
}

/// The heartbeat costs a few commands per topic, whatever the number of
/// users held, in one script call for up to 100 topics ("one round trip");
/// a connection that observes a topic again and again costs one snapshot,
/// not one each time (the idle topic lingers a moment, still watched); and
/// the channel is unsubscribed once the topic stopped lingering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_cost_is_per_topic_and_channels_are_released() {
    let server = RedisServer::start();
    let a = Instance::start(&Store::redis(&server), manual_ticks()).await;
    let clients: Vec<_> = (0..300).map(|i| a.connect(json!({"id": format!("u{i}")}))).collect();
    for (i, c) in clients.iter().enumerate() {
        a.presence.join(c.id, if i < 299 { "big" } else { "small" }).await.unwrap();
    }
    let mut con = server.connection();
    a.presence.tick().await;
    for _ in 0..16 {
        // A replica whose events the tick found late (a starved machine)
        // is read again: one snapshot call each, counted as a repair.
        let (stats_before, before) = (a.presence.stats(), command_stats::read(&mut con));
        a.presence.tick().await;
        let (stats_after, after) = (a.presence.stats(), command_stats::read(&mut con));
        let reads = (stats_after.repairs + stats_after.resyncs) - (stats_before.repairs + stats_before.resyncs);
        assert_eq!(after.evalsha - before.evalsha, 1 + reads, "one tick call for both topics, not one per user");
        // The call and TIME, then per topic: refresh and sweep, and at most a
        // verify (3) and a backstop renewal (7) — never anything per user;
        // a repair adds its subscribe and snapshot.
        let bound = 2 + 2 * (2 + 3 + 7) + 2 * reads;
        assert!(after.total - before.total <= bound, "{} commands", after.total - before.total);
    }

    let observer = a.connect(json!({"id": "o"}));
    let hgetall = |con: &mut redis::Connection| command_stats::calls(con, "hgetall");
    let before = hgetall(&mut con);
    for _ in 0..20 {
        a.presence.sync(observer.id, "watched").await.unwrap();
        a.presence.unsync(observer.id, "watched");
    }
    assert_eq!(hgetall(&mut con) - before, 1, "one snapshot for twenty observe/unobserve rounds");
    a.presence.sync(observer.id, "watched").await.unwrap();
    let subscribers = |con: &mut redis::Connection| -> i64 {
        let reply: (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(presence::backend::redis::TopicKeys::new("presence", "watched").channel)
            .query(con)
            .unwrap();
        reply.1
    };
    assert_eq!(subscribers(&mut con), 1);
    a.close(&observer).await;
    let mut con2 = server.connection();
    poll::until("channel released", DEADLINE, async || {
        a.presence.tick().await; // the heartbeat forgets topics done lingering
        let n = subscribers(&mut con2);
        poll::when(n == 0, n)
    })
    .await;
}

/// A held topic nobody joins or leaves keeps its keys: ticks renew their
/// backstop expiry, each topic on its own tick of every renewal period
/// (here sixteen heartbeats: the backstop of a two-hour ttl less two ttls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_held_topics_have_their_backstop_renewed() {
    let server = RedisServer::start();
    let a = Instance::start(&Store::redis(&server), manual_ticks()).await;
    let ada = a.connect(json!({"id": "ada"}));
    let topics: Vec<String> = (0..20).map(|i| format!("quiet-{i}")).collect();
    for topic in &topics {
        a.presence.join(ada.id, topic).await.unwrap();
    }
    let mut con = server.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("presence{:quiet-*").query(&mut con).unwrap();
    assert!(keys.len() >= 20 * 5, "{keys:?}");
    // As if most of the backstop had passed since the joins set it.
    for key in &keys {
        let _: () = redis::cmd("PEXPIRE").arg(key).arg(5_000).query(&mut con).unwrap();
    }
    for _ in 0..16 {
        a.presence.tick().await;
    }
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
        assert!(ttl > 60_000, "{key}: PTTL {ttl} ms, not renewed by sixteen ticks");
    }
}

/// Every key of a held topic carries the backstop expiry (a topic nobody
/// sweeps any more vanishes on its own), and heartbeats that do not refresh
/// it on every tick never leave a key without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_topics_keep_their_backstop_expiry() {
    let server = RedisServer::start();
    let a = Instance::start(&Store::redis(&server), fast_options()).await;
    let ada = a.connect(json!({"id": "ada"}));
    a.presence.join(ada.id, "room").await.unwrap();
    // Another instance's user, swept after it dies (the sweep writes the
    // sequence counter, which must keep its expiry).
    let b = Instance::start(&Store::redis(&server), fast_options()).await;
    let bob = b.connect(json!({"id": "bob"}));
    b.presence.join(bob.id, "room").await.unwrap();
    b.presence.destroy();
    eventually("bob swept", || async { a.presence.count("room").await.ok() == Some(1) }).await;
    for _ in 0..5 {
        a.presence.tick().await;
    }
    let mut con = server.connection();
    let pattern =
        format!("{}*", presence::backend::redis::TopicKeys::new("presence", "room").users.trim_end_matches("users"));
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut con).unwrap();
    assert!(keys.len() >= 5, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut con).unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{key}: PTTL {ttl}");
    }
}
