//! The original extension's behaviours (the reference's "Behaviours its test suite covers"),
//! each run on the in-memory backend, on a real redis-server and on a real
//! three-master Redis Cluster (shared by the binary, a key prefix per test).

use presence::engine::{presence_topic, select_fn};
use presence::{ConnId, Error, Options};
use presence_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Run one behaviour against every backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(presence_tests::Store::memory()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let server = presence_tests::RedisServer::start();
                super::$name(presence_tests::Store::redis(&server)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                let urls = tokio::task::spawn_blocking(presence_tests::shared_cluster).await.unwrap();
                super::$name(presence_tests::Store::redis_url(urls)).await
            }
        }
    )*};
}

on_every_backend!(
    join_adds_user_and_sends_list,
    join_broadcasts_new_users_and_is_idempotent,
    internal_topics_are_ignored_and_topics_independent,
    select_filters_and_key_comes_from_raw_data,
    missing_key_makes_each_connection_its_own_user,
    multi_tab_counts_one_user_and_leaves_on_last_tab,
    leave_one_topic_or_all,
    leave_is_safe_for_unknown_connections_and_topics,
    updated_when_data_changes_and_restored_when_a_tab_leaves,
    sync_lists_without_joining_and_streams_events,
    list_and_count_across_instances,
    clear_resets_everything_and_allows_rejoin,
    hooks_route_topics,
    cross_instance_join_and_leave_are_announced_once,
    dead_instance_expires_and_does_not_suppress_leave,
    dead_connections_are_left_by_the_heartbeat,
    heartbeat_envelope_carries_live_keys,
    hostile_keys_and_topics,
    mass_disconnect_cleans_up,
    oversized_data_and_bad_topics_are_refused_without_trace,
    caps_refuse_joins_whole_and_clearly,
    big_topics_show_counts_not_members,
    topic_stats_count_users_and_connections_everywhere,
);

/// Joining sends the joiner a `list` that includes itself, and subscribes it
/// to `__presence:<topic>`.
async fn join_adds_user_and_sends_list(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let mut alice = a.connect(json!({"id": "alice", "name": "Alice"}));
    a.presence.join(alice.id, "room").await.unwrap();
    let list = alice.wait_for("list", |_| true).await;
    assert_eq!(list["topic"], "__presence:room");
    assert_eq!(list["data"], json!([{"key": "alice", "data": {"id": "alice", "name": "Alice"}}]));
    assert!(a.hub.is_subscribed(alice.id, "__presence:room"));
    assert_eq!(keys(&a, "room").await, ["alice"]);
}

/// A new user's join reaches existing subscribers once; joining twice on one
/// connection changes nothing.
async fn join_broadcasts_new_users_and_is_idempotent(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let mut alice = a.connect(json!({"id": "alice"}));
    let bob = a.connect(json!({"id": "bob"}));
    a.presence.join(alice.id, "room").await.unwrap();
    a.presence.join(bob.id, "room").await.unwrap();
    a.presence.join(bob.id, "room").await.unwrap();
    alice.wait_for("join", |d| d["key"] == "bob").await;
    a.presence.tick().await;
    assert_eq!(alice.count_for("join", "bob"), 1);
    assert_eq!(a.presence.count("room").await.unwrap(), 2);
}

/// `__`-prefixed topics are not presence topics; topics do not see each other.
async fn internal_topics_are_ignored_and_topics_independent(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let mut alice = a.connect(json!({"id": "alice"}));
    let bob = a.connect(json!({"id": "bob"}));
    a.presence.join(alice.id, "__internal").await.unwrap();
    assert!(alice.events("list").is_empty());
    assert_eq!(a.presence.count("__internal").await.unwrap(), 0);
    a.presence.join(alice.id, "one").await.unwrap();
    a.presence.join(bob.id, "two").await.unwrap();
    assert_eq!(keys(&a, "one").await, ["alice"]);
    assert_eq!(keys(&a, "two").await, ["bob"]);
    a.presence.tick().await;
    assert_eq!(alice.count_for("join", "bob"), 0);
}

/// A custom `select` decides the public data, while the dedup key is read
/// from the raw user data even if `select` drops it.
async fn select_filters_and_key_comes_from_raw_data(store: Store) {
    let options = Options {
        key: "uid".into(),
        select: Some(select_fn(|raw: &Value| Ok(json!({"name": raw["name"]})))),
        ..fast_options()
    };
    let a = Instance::start(&store, options).await;
    let mut tab1 = a.connect(json!({"uid": 7, "name": "Ada", "secret": "s"}));
    let tab2 = a.connect(json!({"uid": 7, "name": "Ada", "secret": "s"}));
    a.presence.join(tab1.id, "room").await.unwrap();
    a.presence.join(tab2.id, "room").await.unwrap();
    let list = tab1.wait_for("list", |_| true).await;
    assert_eq!(list["data"], json!([{"key": "7", "data": {"name": "Ada"}}]));
    assert_eq!(a.presence.count("room").await.unwrap(), 1);

    // The default select strips `__` fields and secrets, recursively.
    let b = Instance::start(&store, fast_options()).await;
    let mut c = b.connect(json!({"id": "c", "__role": "admin", "token": "t", "p": {"__x": 1, "y": 2}}));
    b.presence.join(c.id, "other").await.unwrap();
    let list = c.wait_for("list", |_| true).await;
    assert_eq!(list["data"][0]["data"], json!({"id": "c", "p": {"y": 2}}));

    // A failing select rejects the join with its message and leaves no trace.
    let failing = Options { select: Some(select_fn(|_: &Value| Err("no name".into()))), ..fast_options() };
    let f = Instance::start(&store, failing).await;
    let d = f.connect(json!({"id": "d"}));
    let err = f.presence.join(d.id, "third").await.unwrap_err();
    assert!(matches!(&err, Error::Select(m) if m == "no name"), "{err}");
    assert_eq!(f.presence.count("third").await.unwrap(), 0);
    assert!(!f.hub.is_subscribed(d.id, "__presence:third"));
}

/// Without the key field, every connection is its own user.
async fn missing_key_makes_each_connection_its_own_user(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let one = a.connect(json!({"name": "anon"}));
    let two = a.connect(json!({"name": "anon"}));
    let three = a.connect(Value::Null);
    for c in [&one, &two, &three] {
        a.presence.join(c.id, "room").await.unwrap();
    }
    assert_eq!(a.presence.count("room").await.unwrap(), 3);
}

/// Two tabs of one user are one entry; closing one keeps the user; closing
/// the last announces `leave` and removes the user from the backend.
async fn multi_tab_counts_one_user_and_leaves_on_last_tab(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let mut watcher = a.connect(json!({"id": "w"}));
    a.presence.sync(watcher.id, "room").await.unwrap();
    let tab1 = a.connect(json!({"id": "alice"}));
    let tab2 = a.connect(json!({"id": "alice"}));
    a.presence.join(tab1.id, "room").await.unwrap();
    a.presence.join(tab2.id, "room").await.unwrap();
    assert_eq!(a.presence.count("room").await.unwrap(), 1);
    a.close(&tab1).await;
    assert_eq!(keys(&a, "room").await, ["alice"]);
    a.close(&tab2).await;
    watcher.wait_for("leave", |d| d["key"] == "alice").await;
    assert_eq!(a.presence.count("room").await.unwrap(), 0);
    assert_eq!(watcher.count_for("join", "alice"), 1);
    assert_eq!(watcher.count_for("leave", "alice"), 1);
}

/// `leave(conn, topic)` leaves one topic (and unsubscribes only it);
/// `leave(conn, None)` leaves them all.
async fn leave_one_topic_or_all(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let mut watcher = a.connect(json!({"id": "w"}));
    a.presence.sync(watcher.id, "one").await.unwrap();
    let alice = a.connect(json!({"id": "alice"}));
    for topic in ["one", "two", "three"] {
        a.presence.join(alice.id, topic).await.unwrap();
    }
    a.presence.leave(alice.id, "one").await.unwrap();
    watcher.wait_for("leave", |d| d["key"] == "alice").await;
    assert!(!a.hub.is_subscribed(alice.id, "__presence:one"));
    assert!(a.hub.is_subscribed(alice.id, "__presence:two"));
    assert_eq!(a.presence.count("two").await.unwrap(), 1);
    a.presence.leave_all(alice.id).await.unwrap();
    for topic in ["one", "two", "three"] {
        assert_eq!(a.presence.count(topic).await.unwrap(), 0, "{topic}");
    }
    assert!(!a.hub.is_subscribed(alice.id, "__presence:two"));
}

/// Leaving with an unknown connection or topic is a no-op.
async fn leave_is_safe_for_unknown_connections_and_topics(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    a.presence.leave_all(ConnId::new(424242)).await.unwrap();
    a.presence.leave(ConnId::new(424242), "nowhere").await.unwrap();
    let alice = a.connect(json!({"id": "alice"}));
    a.presence.join(alice.id, "room").await.unwrap();
    a.presence.leave(alice.id, "elsewhere").await.unwrap();
    assert_eq!(a.presence.count("room").await.unwrap(), 1);
}

/// A tab with other public data announces `updated`; equal data announces
/// nothing; when that tab leaves, the remaining tab's data is restored.
async fn updated_when_data_changes_and_restored_when_a_tab_leaves(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let mut watcher = a.connect(json!({"id": "w"}));
    a.presence.sync(watcher.id, "room").await.unwrap();
    let tab1 = a.connect(json!({"id": "alice", "status": "idle"}));
    let same = a.connect(json!({"id": "alice", "status": "idle"}));
    let tab2 = a.connect(json!({"id": "alice", "status": "typing"}));
    a.presence.join(tab1.id, "room").await.unwrap();
    a.presence.join(same.id, "room").await.unwrap();
    a.presence.join(tab2.id, "room").await.unwrap();
    watcher.wait_for("updated", |d| d["data"]["status"] == "typing").await;
    assert_eq!(watcher.events("updated").len(), 1, "equal data must not announce");
    a.close(&tab2).await;
    watcher.wait_for("updated", |d| d["data"]["status"] == "idle").await;
    let list = a.presence.list("room").await.unwrap();
    assert_eq!(list[0].data["status"], "idle");
}

/// `sync` sends the list without joining (empty for an unknown topic), and
/// the observer then receives events, also from other instances.
async fn sync_lists_without_joining_and_streams_events(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let mut observer = a.connect(json!({"id": "observer"}));
    a.presence.sync(observer.id, "room").await.unwrap();
    let list = observer.wait_for("list", |_| true).await;
    assert_eq!(list["data"], json!([]));
    assert_eq!(a.presence.count("room").await.unwrap(), 0);
    let bob = b.connect(json!({"id": "bob"}));
    b.presence.join(bob.id, "room").await.unwrap();
    observer.wait_for("join", |d| d["key"] == "bob").await;
    b.close(&bob).await;
    observer.wait_for("leave", |d| d["key"] == "bob").await;
    // Unobserving stops the events.
    a.presence.hooks().unsubscribe(observer.id, "__presence:room").await.unwrap();
    assert!(!a.hub.is_subscribed(observer.id, "__presence:room"));
}

/// `list` and `count` see every instance's users; unknown topics are empty.
async fn list_and_count_across_instances(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let alice = a.connect(json!({"id": "alice"}));
    let bob = b.connect(json!({"id": "bob"}));
    a.presence.join(alice.id, "room").await.unwrap();
    b.presence.join(bob.id, "room").await.unwrap();
    assert_eq!(keys(&a, "room").await, ["alice", "bob"]);
    assert_eq!(b.presence.count("room").await.unwrap(), 2);
    assert!(a.presence.list("unknown").await.unwrap().is_empty());
    assert_eq!(a.presence.count("unknown").await.unwrap(), 0);
}

/// `clear` empties every topic on every instance, unsubscribes connections
/// and observers, is not undone by any heartbeat, and later joins work.
async fn clear_resets_everything_and_allows_rejoin(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let mut alice = a.connect(json!({"id": "alice"}));
    let bob = b.connect(json!({"id": "bob"}));
    let observer = b.connect(json!({"id": "o"}));
    a.presence.join(alice.id, "room").await.unwrap();
    b.presence.join(bob.id, "room").await.unwrap();
    b.presence.sync(observer.id, "room").await.unwrap();
    // An observer of a topic nobody ever joined (no state, only a watcher).
    let lone_observer = b.connect(json!({"id": "lone"}));
    b.presence.sync(lone_observer.id, "empty-room").await.unwrap();
    a.presence.clear().await.unwrap();
    assert_eq!(a.presence.count("room").await.unwrap(), 0);
    eventually("b drops its connections", || async {
        !b.hub.is_subscribed(bob.id, "__presence:room")
            && !b.hub.is_subscribed(observer.id, "__presence:room")
            && !b.hub.is_subscribed(lone_observer.id, "__presence:empty-room")
    })
    .await;
    assert!(!a.hub.is_subscribed(alice.id, "__presence:room"));
    // Several heartbeats later, nobody has brought the old state back.
    for _ in 0..3 {
        a.presence.tick().await;
        b.presence.tick().await;
    }
    assert_eq!(a.presence.count("room").await.unwrap(), 0);
    // Re-joining works on both instances.
    a.presence.join(alice.id, "room").await.unwrap();
    b.presence.join(bob.id, "room").await.unwrap();
    assert_eq!(keys(&b, "room").await, ["alice", "bob"]);
    alice.wait_for("join", |d| d["key"] == "bob").await;
}

/// The hooks route `__presence:<t>` to sync, other `__` topics nowhere,
/// everything else to join/leave; `close` leaves all.
async fn hooks_route_topics(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let hooks = a.presence.hooks();
    let mut alice = a.connect(json!({"id": "alice"}));
    hooks.subscribe(alice.id, "__presence:lobby").await.unwrap();
    alice.wait_for("list", |d| d == &json!([])).await;
    assert_eq!(a.presence.count("lobby").await.unwrap(), 0);
    hooks.subscribe(alice.id, "__other").await.unwrap();
    hooks.subscribe(alice.id, "lobby").await.unwrap();
    assert_eq!(a.presence.count("lobby").await.unwrap(), 1);
    hooks.unsubscribe(alice.id, "lobby").await.unwrap();
    assert_eq!(a.presence.count("lobby").await.unwrap(), 0);
    hooks.subscribe(alice.id, "lobby").await.unwrap();
    hooks.subscribe(alice.id, "hall").await.unwrap();
    hooks.close(alice.id).await.unwrap();
    assert_eq!(a.presence.count("lobby").await.unwrap() + a.presence.count("hall").await.unwrap(), 0);
}

/// A user on two instances: one `join` when the first connects anywhere,
/// none for the second, and one `leave` only after the last lets go.
async fn cross_instance_join_and_leave_are_announced_once(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let mut wa = a.connect(json!({"id": "wa"}));
    let mut wb = b.connect(json!({"id": "wb"}));
    a.presence.sync(wa.id, "room").await.unwrap();
    b.presence.sync(wb.id, "room").await.unwrap();
    let on_a = a.connect(json!({"id": "alice"}));
    let on_b = b.connect(json!({"id": "alice"}));
    a.presence.join(on_a.id, "room").await.unwrap();
    b.presence.join(on_b.id, "room").await.unwrap();
    wb.wait_for("join", |d| d["key"] == "alice").await;
    a.close(&on_a).await;
    assert_eq!(keys(&b, "room").await, ["alice"], "still held by b");
    b.close(&on_b).await;
    wa.wait_for("leave", |d| d["key"] == "alice").await;
    wb.wait_for("leave", |d| d["key"] == "alice").await;
    a.presence.tick().await;
    for w in [&mut wa, &mut wb] {
        assert_eq!(w.count_for("join", "alice"), 1);
        assert_eq!(w.count_for("leave", "alice"), 1);
        assert_eq!(w.events("updated").len(), 0);
    }
}

/// An instance that stops without cleaning up: its users leave once its
/// holds expire, while the other instance keeps the topic alive, and its
/// stale hold does not keep a shared user present.
async fn dead_instance_expires_and_does_not_suppress_leave(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let dead = Instance::start(&store, fast_options()).await;
    let mut watcher = a.connect(json!({"id": "w"}));
    a.presence.join(watcher.id, "room").await.unwrap();
    let ghost = dead.connect(json!({"id": "ghost"}));
    let shared_dead = dead.connect(json!({"id": "shared"}));
    let shared_live = a.connect(json!({"id": "shared"}));
    dead.presence.join(ghost.id, "room").await.unwrap();
    dead.presence.join(shared_dead.id, "room").await.unwrap();
    a.presence.join(shared_live.id, "room").await.unwrap();
    dead.presence.destroy(); // no heartbeat, no leave: as if the process died
    watcher.wait_for("leave", |d| d["key"] == "ghost").await;
    assert_eq!(keys(&a, "room").await, ["shared", "w"]);
    a.close(&shared_live).await;
    watcher.wait_for("leave", |d| d["key"] == "shared").await;
    assert_eq!(keys(&a, "room").await, ["w"]);
    assert_eq!(watcher.count_for("leave", "ghost"), 1);
}

/// A connection the platform lost without a close hook is left by the heartbeat.
async fn dead_connections_are_left_by_the_heartbeat(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let mut watcher = a.connect(json!({"id": "w"}));
    a.presence.sync(watcher.id, "room").await.unwrap();
    let alice = a.connect(json!({"id": "alice"}));
    a.presence.join(alice.id, "room").await.unwrap();
    a.hub.disconnect(alice.id); // socket gone, no close hook
    watcher.wait_for("leave", |d| d["key"] == "alice").await;
    assert_eq!(a.presence.count("room").await.unwrap(), 0);
}

/// Each heartbeat sends the live keys to presence subscribers; an empty topic
/// gets none.
async fn heartbeat_envelope_carries_live_keys(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let mut alice = a.connect(json!({"id": "alice"}));
    let mut observer = a.connect(json!({"id": "o"}));
    a.presence.join(alice.id, "room").await.unwrap();
    a.presence.sync(observer.id, "empty").await.unwrap();
    let beat = alice.wait_for("heartbeat", |_| true).await;
    assert_eq!(beat["topic"], "__presence:room");
    assert_eq!(beat["data"], json!(["alice"]));
    a.presence.tick().await;
    assert!(observer.events("heartbeat").is_empty());
}

/// A count-only topic, across two instances: beyond its threshold its
/// subscribers get an empty list, then coalesced `count` events instead of
/// member events and heartbeats; a tenth below it, the full list again.
async fn big_topics_show_counts_not_members(store: Store) {
    let options = Options {
        count_only: [("big:".to_owned(), 10)].into(),
        count_window: Duration::from_millis(50),
        ..fast_options()
    };
    let a = Instance::start(&store, options.clone()).await;
    let b = Instance::start(&store, options).await;
    let mut watcher = b.connect(json!({"id": "watcher"}));
    b.presence.sync(watcher.id, "big:hall").await.unwrap();
    let mut small_watcher = b.connect(json!({"id": "small"}));
    b.presence.sync(small_watcher.id, "small:hall").await.unwrap();
    let users: Vec<Client> = (0..200).map(|i| a.connect(json!({"id": format!("u{i}")}))).collect();
    let joins = users.iter().map(|u| a.presence.join(u.id, "big:hall"));
    futures::future::try_join_all(joins).await.unwrap();
    a.presence.join(users[0].id, "small:hall").await.unwrap();

    let last = watcher.wait_for("count", |n| n == &json!(200)).await;
    assert_eq!(last["topic"], "__presence:big:hall");
    let lists = watcher.events("list");
    assert!(lists.len() >= 2, "the sync's list, then one on entering the mode: {lists:?}");
    assert_eq!(lists.last().unwrap()["data"], json!([]), "entering the mode empties the list: {lists:?}");
    let member_events = watcher.events("join").len();
    assert!(member_events <= 10, "{member_events} joins shown beyond the threshold");
    let counts = watcher.events("count").len();
    assert!(counts <= 25, "200 joins became {counts} count events, not a handful");
    // Other topics are untouched; a late subscriber gets the count at once.
    small_watcher.wait_for("join", |d| d["key"] == "u0").await;
    let mut late = a.connect(json!({"id": "late"}));
    a.presence.sync(late.id, "big:hall").await.unwrap();
    assert_eq!(late.wait_for("list", |_| true).await["data"], json!([]));
    late.wait_for("count", |n| n == &json!(200)).await;
    // No heartbeat envelope lists the 200 keys.
    a.presence.tick().await;
    b.presence.tick().await;
    assert!(watcher.events("heartbeat").is_empty() && late.events("heartbeat").is_empty());

    // Down to 9 users (a tenth below 10): the full list comes back, then events.
    for user in &users[9..] {
        a.close(user).await;
    }
    let list = watcher.wait_for("list", |l| l.as_array().is_some_and(|l| l.len() == 9)).await;
    let mut shown: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap()).collect();
    shown.sort();
    assert_eq!(shown, ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"]);
    a.close(&users[8]).await;
    watcher.wait_for("leave", |d| d["key"] == "u8").await;
}

/// `topic_stats` counts unique users and their connections over every
/// instance, without reading members: exact for the asking instance, as of
/// the last heartbeat for the others; an instance's connections go with its
/// last user there, or with its hold when it dies.
async fn topic_stats_count_users_and_connections_everywhere(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let dead = Instance::start(&store, fast_options()).await;
    let stats = |users, connections| presence::TopicStats { users, connections };
    let alice = [a.connect(json!({"id": "alice"})), a.connect(json!({"id": "alice"}))];
    let on_b = [b.connect(json!({"id": "bob"})), b.connect(json!({"id": "alice"}))];
    let carol = dead.connect(json!({"id": "carol"}));
    for client in &alice {
        a.presence.join(client.id, "room").await.unwrap();
    }
    for client in &on_b {
        b.presence.join(client.id, "room").await.unwrap();
    }
    dead.presence.join(carol.id, "room").await.unwrap();
    assert_eq!(a.presence.topic_stats("room").await.unwrap().connections, 2, "only its own before any heartbeat");
    for instance in [&a, &b, &dead] {
        instance.presence.tick().await;
    }
    assert_eq!(a.presence.topic_stats("room").await.unwrap(), stats(3, 5));
    // The asking instance is exact at once; the others after their heartbeat.
    a.close(&alice[0]).await;
    assert_eq!(a.presence.topic_stats("room").await.unwrap(), stats(3, 4));
    assert_eq!(b.presence.topic_stats("room").await.unwrap(), stats(3, 5));
    a.presence.tick().await;
    assert_eq!(b.presence.topic_stats("room").await.unwrap(), stats(3, 4));
    // b's last user leaving takes its connections with it, without a heartbeat.
    for client in &on_b {
        b.close(client).await;
    }
    assert_eq!(a.presence.topic_stats("room").await.unwrap(), stats(2, 2));
    // A dead instance's connections go with its hold.
    dead.presence.destroy();
    eventually("the dead instance's hold is swept", || async {
        a.presence.topic_stats("room").await.unwrap() == stats(1, 1)
    })
    .await;
    assert_eq!(a.presence.topic_stats("unknown").await.unwrap(), stats(0, 0));
}

/// User keys and topics with separators, braces and unicode are just bytes.
async fn hostile_keys_and_topics(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let b = Instance::start(&store, fast_options()).await;
    let names = ["a|b", "}", "{x}", "p:{room}:users", "ü 💬", "a}:held:0123456789abcdef"];
    for (i, name) in names.iter().enumerate() {
        let on_a = a.connect(json!({"id": name}));
        let on_b = b.connect(json!({"id": name}));
        let topic = format!("t{i}{name}");
        a.presence.join(on_a.id, &topic).await.unwrap();
        b.presence.join(on_b.id, &topic).await.unwrap();
        a.presence.join(on_a.id, name).await.unwrap();
        assert_eq!(keys(&a, &topic).await, [name.to_string()]);
        a.close(&on_a).await;
        assert_eq!(keys(&b, &topic).await, [name.to_string()], "b still holds {name}");
        b.close(&on_b).await;
        assert_eq!(a.presence.count(&topic).await.unwrap(), 0, "{topic}");
        assert_eq!(a.presence.count(name).await.unwrap(), 0, "{name}");
    }
}

/// Many connections closing at once leave nothing behind.
async fn mass_disconnect_cleans_up(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let clients: Vec<_> = (0..200).map(|i| a.connect(json!({"id": format!("u{}", i % 50)}))).collect();
    for (i, c) in clients.iter().enumerate() {
        a.presence.join(c.id, &format!("room{}", i % 4)).await.unwrap();
    }
    // room0 gets connections 0, 4, 8, …: the 25 even user ids
    assert_eq!(a.presence.count("room0").await.unwrap(), 25);
    futures::future::join_all(clients.iter().map(|c| a.close(c))).await;
    for i in 0..4 {
        assert_eq!(a.presence.count(&format!("room{i}")).await.unwrap(), 0);
    }
    assert_eq!(a.hub.connections(), 0);
}

/// Bad input is refused with an error naming the problem, leaving no trace.
async fn oversized_data_and_bad_topics_are_refused_without_trace(store: Store) {
    let a = Instance::start(&store, fast_options()).await;
    let big = a.connect(json!({"id": "big", "bio": "x".repeat(20_000)}));
    let err = a.presence.join(big.id, "room").await.unwrap_err();
    assert!(matches!(err, Error::DataTooLarge { .. }), "{err}");
    let err = a.presence.join(big.id, "").await.unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = a.presence.join(big.id, &"t".repeat(5000)).await.unwrap_err();
    assert!(err.to_string().contains("topic limit"), "{err}");
    assert!(matches!(a.presence.join(ConnId::new(999_999), "room").await, Err(Error::UnknownConnection(_))));
    assert_eq!(a.presence.count("room").await.unwrap(), 0);
    assert!(!a.hub.is_subscribed(big.id, &presence_topic("room")));
}

/// Every cap refuses a join whole (nothing listed, subscribed or counted)
/// with an error naming the cap. The member cap holds across instances,
/// in the store's own atomic step.
async fn caps_refuse_joins_whole_and_clearly(store: Store) {
    let options = Options {
        max_members_per_topic: 3,
        max_key_bytes: 16,
        max_topics_per_connection: 2,
        max_topics_per_instance: 4,
        ..fast_options()
    };
    let a = Instance::start(&store, options.clone()).await;
    let b = Instance::start(&store, options).await;
    // Members per topic, over both instances; another tab of a listed user still joins.
    let users: Vec<_> = (0..3).map(|i| [&a, &b][i % 2].connect(json!({"id": format!("u{i}")}))).collect();
    for (i, user) in users.iter().enumerate() {
        [&a, &b][i % 2].presence.join(user.id, "room").await.unwrap();
    }
    let late = b.connect(json!({"id": "late"}));
    let err = b.presence.join(late.id, "room").await.unwrap_err();
    assert!(matches!(err, Error::TopicFull { members: 3, limit: 3 }), "{err}");
    assert!(err.to_string().starts_with("TOPIC_FULL: "), "{err}");
    assert!(!b.hub.is_subscribed(late.id, &presence_topic("room")));
    let second_tab = a.connect(json!({"id": "u1"}));
    a.presence.join(second_tab.id, "room").await.expect("a listed user's other tab is no new member");
    assert_eq!(a.presence.count("room").await.unwrap(), 3);
    // Once someone leaves, there is room again.
    a.close(&users[0]).await;
    b.presence.join(late.id, "room").await.unwrap();
    assert_eq!(b.presence.list("room").await.unwrap().len(), 3);

    // User key length.
    let long = a.connect(json!({"id": "k".repeat(17)}));
    let err = a.presence.join(long.id, "other").await.unwrap_err();
    assert!(matches!(err, Error::KeyTooLong { size: 17, limit: 16 }), "{err}");
    // Topics per connection (joined and observed together).
    let busy = a.connect(json!({"id": "busy"}));
    a.presence.join(busy.id, "t1").await.unwrap();
    a.presence.sync(busy.id, "t2").await.unwrap();
    let err = a.presence.join(busy.id, "t3").await.unwrap_err();
    assert!(matches!(err, Error::TooManyTopicsForConnection { limit: 2, .. }), "{err}");
    a.presence.join(busy.id, "t2").await.expect("a topic it already observes is no new topic");
    // Topics per instance: room, t1, t2 and one more.
    let other = a.connect(json!({"id": "other"}));
    a.presence.join(other.id, "t4").await.unwrap();
    let err = a.presence.sync(other.id, "t5").await.unwrap_err();
    assert!(matches!(err, Error::TooManyTopics { limit: 4 }), "{err}");
    assert!(err.to_string().starts_with("LIMIT_EXCEEDED: "), "{err}");
    for topic in ["other", "t3", "t5"] {
        assert_eq!(a.presence.count(topic).await.unwrap(), 0, "{topic}");
    }
}

/// Invalid options are refused at construction with a clear error.
#[tokio::test]
async fn invalid_options_are_rejected() {
    let store = Store::memory();
    let cases = [
        (Options { heartbeat: Duration::ZERO, ..Options::default() }, "heartbeat"),
        (Options { ttl: Duration::ZERO, ..Options::default() }, "ttl"),
        (Options { heartbeat: Duration::from_secs(60), ttl: Duration::from_secs(30), ..Options::default() }, "ttl"),
        (Options { key: String::new(), ..Options::default() }, "key"),
        (Options { count_only: [("x".repeat(2000), 1)].into(), ..Options::default() }, "count_only"),
    ];
    for (options, name) in cases {
        let err = presence::Presence::new(store.backend().await, presence::Hub::new(), options).err().unwrap();
        assert!(matches!(&err, Error::InvalidOption { name: n, .. } if *n == name), "{err}");
    }
}
