//! Presence on a real Redis Cluster (three masters, three replicas, started by
//! the test): every script touches only the keys it declares; topics spread
//! over every master; a master killed under join/leave load and a slot range
//! migrated while clients are joined lose nobody, leave no ghost and show no
//! client a second `join`.

use presence::backend::redis::{key_slot, RedisBackend, RedisOptions, TopicKeys, Topology};
use presence::backend::{HoldTerms, TickTopic};
use presence::Error;
use presence_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::time::{Duration, Instant};

/// `MONITOR` shows each command a script runs (`[0 lua]`) after the
/// `EVALSHA` that ran it: every key such a command touches must be one the
/// call declared in KEYS, and every channel it publishes to must hash to their
/// slot. Runs every presence and plugin-kv script through its paths (join,
/// cap, re-join, leave, sweep of an expired hold, snapshot, count, tick,
/// clear, kv set/increment/delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_touch_only_the_keys_they_declare() {
    let server = RedisServer::start();
    let monitor = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "MONITOR"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli");
    let store = Store::redis(&server);
    let (a, b) = (store.redis_backend().await, store.redis_backend().await);
    eventually("MONITOR is listening", || async {
        let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut server.connection()).unwrap();
        clients.contains("cmd=monitor")
    })
    .await;
    use presence::backend::Backend;
    let short = HoldTerms::ttl(Duration::from_millis(300));
    let capped = HoldTerms { max_members: 1, ..short };
    for topic in ["room", "}odd{", ""] {
        a.join(topic, "ada", r#"{"n":1}"#, None, short).await.unwrap();
        a.join(topic, "ada", r#"{"n":2}"#, None, short).await.unwrap();
        b.join(topic, "bob", "{}", None, capped).await.unwrap();
        b.join(topic, "ada", "{}", None, short).await.unwrap();
        a.leave(topic, "ada").await.unwrap();
        a.tick(
            &[TickTopic { topic: topic.into(), held: 0, epoch: None, connections: None, verify: false, renew: false }],
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        // b stops ticking: its holds expire and the next read sweeps them.
        eventually("b's holds are swept", || async { a.count(topic).await.unwrap() == 0 }).await;
        a.snapshot(topic, 0).await.unwrap();
        a.leave(topic, "nobody").await.unwrap();
    }
    a.clear().await.unwrap();
    let kv =
        presence::plugin::kv::RedisKv::connect(&RedisOptions::new(server.url()), Default::default()).await.unwrap();
    use presence::plugin::kv::PluginKv;
    kv.set("k", "v", Some(Duration::from_secs(5))).await.unwrap();
    kv.increment("n", 2, None).await.unwrap();
    kv.delete("k").await.unwrap();
    let _: () = redis::cmd("ECHO").arg("end-of-check").query(&mut server.connection()).unwrap();

    let lines = tokio::task::spawn_blocking(move || {
        let mut monitor = monitor;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(monitor.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line.contains("end-of-check") {
                break;
            }
            lines.push(line);
        }
        let _ = monitor.kill();
        let _ = monitor.wait();
        lines
    })
    .await
    .unwrap();

    let mut con = server.connection();
    let mut declared: Option<BTreeSet<String>> = None;
    let (mut scripts, mut commands) = (0, 0);
    for line in &lines {
        let Some((origin, args)) = parse_monitor_line(line) else { continue };
        let name = args[0].to_ascii_uppercase();
        if origin != "lua" {
            declared = match name.as_str() {
                "EVALSHA" | "EVAL" => {
                    scripts += 1;
                    let n: usize = args[2].parse().unwrap();
                    Some(args[3..3 + n].iter().cloned().collect())
                }
                _ => None,
            };
            continue;
        }
        commands += 1;
        let keys = declared.as_ref().unwrap_or_else(|| panic!("a script command outside a script: {line}"));
        let slot = keys.iter().map(|k| key_slot(k.as_bytes())).collect::<BTreeSet<_>>();
        assert!(slot.len() <= 1, "one script call declared keys of several slots: {keys:?}");
        if name == "PUBLISH" || name == "SPUBLISH" {
            assert_eq!(Some(&key_slot(args[1].as_bytes())), slot.first(), "channel off the keys' slot: {line}");
            continue;
        }
        let touched: Vec<String> = redis::cmd("COMMAND").arg("GETKEYS").arg(&args).query(&mut con).unwrap_or_default();
        for key in touched {
            assert!(keys.contains(&key), "{line}\n  touches {key:?}, not among the declared {keys:?}");
        }
    }
    assert!(scripts >= 40 && commands >= 200, "the check saw {scripts} script calls and {commands} commands");
}

/// `1700000000.123456 [0 lua] "ZADD" "k" …` → ("lua", ["ZADD", "k", …]).
fn parse_monitor_line(line: &str) -> Option<(String, Vec<String>)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let origin = line[open + 1..close].split_whitespace().nth(1)?.to_owned();
    let mut args = Vec::new();
    let mut chars = line[close + 1..].chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = Vec::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next()? {
                    'x' => {
                        let hex: String = chars.by_ref().take(2).collect();
                        arg.push(u8::from_str_radix(&hex, 16).ok()?);
                    }
                    'n' => arg.push(b'\n'),
                    'r' => arg.push(b'\r'),
                    't' => arg.push(b'\t'),
                    'a' => arg.push(7),
                    'b' => arg.push(8),
                    other => arg.extend(other.to_string().as_bytes()),
                },
                other => arg.extend(other.to_string().as_bytes()),
            }
        }
        args.push(String::from_utf8_lossy(&arg).into_owned());
    }
    (!args.is_empty()).then_some((origin, args))
}

/// A heartbeat of 200 ms and a ttl above the time a failover takes here
/// (about two seconds with `cluster-node-timeout 1000`): holds outlive the
/// outage, so nobody flaps. A ttl below it would show the users of the
/// failed shard leaving and joining again, never lost.
fn failover_options() -> presence::Options {
    presence::Options { heartbeat: Duration::from_millis(200), ttl: Duration::from_secs(4), ..fast_options() }
}

/// Users joined and left at random on two instances, watched from both.
struct Load {
    instances: Vec<Instance>,
    topics: Vec<String>,
    /// (instance, topic, user) → that user's connection.
    users: BTreeMap<(usize, usize, usize), Client>,
    /// topic → keys that should be listed.
    model: BTreeMap<String, BTreeSet<String>>,
    /// (instance, topic, a connection observing it there).
    watchers: Vec<(usize, usize, Client)>,
    rng: StdRng,
    seed: u64,
}

const USERS_PER_TOPIC: usize = 3;

impl Load {
    async fn start(store: &Store, topics: Vec<String>) -> Self {
        let seed = std::env::var("PRESENCE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        println!("seed {seed} (PRESENCE_SEED={seed} reproduces the choices)");
        let mut instances = Vec::new();
        for _ in 0..2 {
            instances.push(Instance::start(store, failover_options()).await);
        }
        let mut users = BTreeMap::new();
        let mut watchers = Vec::new();
        for (i, instance) in instances.iter().enumerate() {
            for (t, topic) in topics.iter().enumerate() {
                for u in 0..USERS_PER_TOPIC {
                    users.insert((i, t, u), instance.connect(json!({"id": format!("i{i}-t{t}-u{u}")})));
                }
                watchers.push((i, t, instance.watcher(topic).await));
            }
        }
        let model = topics.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
        Self { instances, topics, users, model, watchers, rng: StdRng::seed_from_u64(seed), seed }
    }

    /// Join or leave one random user. A join the store cannot take now is
    /// kept (deferred) and counts as joined; any other refusal fails the test.
    async fn step(&mut self) {
        let (i, t, u) = (
            self.rng.random_range(0..self.instances.len()),
            self.rng.random_range(0..self.topics.len()),
            self.rng.random_range(0..USERS_PER_TOPIC),
        );
        let (conn, topic, key) = (self.users[&(i, t, u)].id, &self.topics[t], format!("i{i}-t{t}-u{u}"));
        let presence = &self.instances[i].presence;
        let shown = self.model.get_mut(topic).unwrap();
        if shown.contains(&key) {
            let _ = presence.leave(conn, topic).await;
            shown.remove(&key);
        } else {
            match presence.join(conn, topic).await {
                Ok(()) | Err(Error::Deferred(_)) => {
                    shown.insert(key);
                }
                Err(e) => panic!("seed {}: join of {key} to {topic} refused: {e}", self.seed),
            }
        }
    }

    /// Join/leave steps until `until` is true (checked between steps).
    async fn churn_until(&mut self, mut until: impl FnMut() -> bool) -> usize {
        let mut steps = 0;
        while !until() {
            self.step().await;
            steps += 1;
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..10))).await;
        }
        steps
    }

    /// Every instance lists exactly the model, and every watcher shows it,
    /// having never seen a second `join` for a user it listed.
    async fn converged(&mut self) -> Result<(), String> {
        for (t, topic) in self.topics.iter().enumerate() {
            let want: Vec<String> = self.model[topic].iter().cloned().collect();
            for (i, instance) in self.instances.iter().enumerate() {
                let listed = match instance.presence.list(topic).await {
                    Ok(members) => members.into_iter().map(|m| m.key).collect::<BTreeSet<_>>(),
                    Err(e) => return Err(format!("instance {i}: list {topic}: {e}")),
                };
                if listed.iter().cloned().collect::<Vec<_>>() != want {
                    return Err(format!("instance {i} lists {listed:?} on {topic}, want {want:?}"));
                }
            }
            for (i, _, watcher) in self.watchers.iter_mut().filter(|(_, wt, _)| *wt == t) {
                let shown = watcher.view(topic).map_err(|e| format!("seed {}: {topic}: {e}", self.seed))?;
                if shown.iter().cloned().collect::<Vec<_>>() != want {
                    return Err(format!("a watcher on instance {i} shows {shown:?} on {topic}, want {want:?}"));
                }
            }
        }
        Ok(())
    }

    /// `steps` join/leave steps.
    async fn churn_steps(&mut self, steps: usize) -> usize {
        let mut n = 0;
        self.churn_until(move || {
            n += 1;
            n > steps
        })
        .await
    }

    /// Wait (with the test deadline) until [`Load::converged`]; how long it took.
    async fn wait_converged(&mut self, what: &str) -> Duration {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < DEADLINE * 2 {
            match self.converged().await {
                Ok(()) => return started.elapsed(),
                Err(e) if e.contains("second `join`") => panic!("{what}: {e}"),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("seed {}: {what}: not converged within {:?}: {last}", self.seed, DEADLINE * 2);
    }
}

/// Topic names spread over the masters (at least `per_master` on each).
fn topics_on_every_master(cluster: &RedisCluster, per_master: usize) -> Vec<String> {
    let masters = cluster.masters();
    let mut on: BTreeMap<u16, Vec<String>> = masters.iter().map(|m| (m.port, Vec::new())).collect();
    for n in 0.. {
        let topic = format!("room-{n}");
        let master = cluster.master_of(&TopicKeys::new("x", &topic).users);
        if let Some(list) = on.get_mut(&master).filter(|l| l.len() < per_master) {
            list.push(topic);
        }
        if on.values().all(|l| l.len() == per_master) {
            break;
        }
    }
    on.into_values().flatten().collect()
}

/// A master is killed with SIGKILL under join/leave load: its replica is
/// promoted, and then every live user is listed by every instance again, no
/// ghost remains, and no watcher saw a duplicate `join`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_over_without_losing_anyone() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let topics = topics_on_every_master(&cluster, 3);
    let store = Store::redis_url(&cluster.urls());
    let backend = store.redis_backend().await;
    assert_eq!(backend.topology(), Topology::Cluster);
    let victim = cluster.master_of(&TopicKeys::new("x", &topics[0]).users);
    let mut load = Load::start(&store, topics).await;
    load.churn_steps(60).await;

    let mut cluster = cluster;
    let killed_at = Instant::now();
    cluster.kill(victim);
    let promoted = tokio::task::spawn_blocking(move || {
        cluster.wait_settled();
        (cluster, killed_at.elapsed())
    });
    let steps = load.churn_until(|| promoted.is_finished()).await;
    let (_cluster, promoted) = promoted.await.unwrap();
    let steps = steps + load.churn_steps(30).await;
    let settled = load.wait_converged("after the failover").await;
    println!(
        "failover: replica promoted {promoted:?} after the kill; {steps} joins/leaves meanwhile; \
         full presence {settled:?} after the load stopped ({:?} after the kill)",
        killed_at.elapsed()
    );
}

/// 300 topics land on all three masters; then a range of slots migrates
/// (`redis-cli --cluster reshard`) while their topics' users are joined and
/// the load goes on: afterwards everyone is listed, no ghost, no duplicate join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_spread_over_masters_and_survive_a_slot_migration() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let store = Store::redis_url(&cluster.seed_url());
    let a = Instance::start(&store, failover_options()).await;
    let users: Vec<_> = (0..300).map(|n| a.connect(json!({"id": format!("u{n}")}))).collect();
    for (n, user) in users.iter().enumerate() {
        a.presence.join(user.id, &format!("spread-{n}")).await.unwrap();
    }
    // A heartbeat sends one pipeline per master, each call to the right one.
    let backend = store.redis_backend().await;
    let ticked: Vec<TickTopic> = (0..300)
        .map(|n| TickTopic {
            topic: format!("spread-{n}"),
            held: 0,
            epoch: None,
            connections: None,
            verify: true,
            renew: false,
        })
        .collect();
    let reports = presence::backend::Backend::tick(&backend, &ticked, Duration::from_secs(4)).await.unwrap();
    assert!(reports.iter().all(|r| r.latest.is_some_and(|l| l.members == 1)), "{reports:?}");
    assert_eq!(backend.retried_calls(), 0, "every batched call went to its slot's master");
    let per_master = cluster.keys_per_master();
    println!("keys per master after 300 topics: {per_master:?}");
    assert_eq!(per_master.len(), 3);
    assert!(per_master.values().all(|&keys| keys >= 300), "every master holds a share: {per_master:?}");

    let topics = topics_on_every_master(&cluster, 4);
    let mut load = Load::start(&store, topics.clone()).await;
    load.churn_steps(60).await;
    let masters = cluster.masters();
    let (from, to) = (masters[0].clone(), masters[1].clone());
    let before: Vec<u16> = topics.iter().map(|t| cluster.master_of(&TopicKeys::new("x", t).users)).collect();
    let cluster = std::sync::Arc::new(cluster);
    let reshard = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || {
            let slots = (from.slots / 2).to_string();
            cluster.cli(&[
                "reshard",
                "--cluster-from",
                &from.id,
                "--cluster-to",
                &to.id,
                "--cluster-slots",
                &slots,
                "--cluster-yes",
            ]);
            cluster.wait_settled();
        })
    };
    let steps = load.churn_until(|| reshard.is_finished()).await;
    reshard.await.unwrap();
    let after: Vec<u16> = topics.iter().map(|t| cluster.master_of(&TopicKeys::new("x", t).users)).collect();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(moved > 0, "the migration moved none of the watched topics: {before:?} → {after:?}");
    let settled = load.wait_converged("after the migration").await;
    println!(
        "reshard: {moved} of {} watched topics moved, {steps} joins/leaves meanwhile; converged {settled:?} after",
        topics.len()
    );
    // The 300 joined users are all still there, wherever their slot went
    // (a read that meets a slot mid-move may fail; it is retried).
    for n in 0..users.len() {
        let topic = format!("spread-{n}");
        eventually(&format!("{topic} lists u{n}"), || async {
            a.presence.list(&topic).await.is_ok_and(|m| m.len() == 1 && m[0].key == format!("u{n}"))
        })
        .await;
    }
}

/// A single seed URL of a cluster node is enough: the backend finds the
/// cluster; a plain Redis stays plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_is_found_from_one_url() {
    let urls = tokio::task::spawn_blocking(shared_cluster).await.unwrap();
    let seed = urls.split(',').next().unwrap().to_owned();
    let backend = RedisBackend::connect(RedisOptions::new(seed)).await.unwrap();
    assert_eq!(backend.topology(), Topology::Cluster);
    let server = RedisServer::start();
    let backend = RedisBackend::connect(RedisOptions::new(server.url())).await.unwrap();
    assert_eq!(backend.topology(), Topology::Single);
    let err = RedisBackend::connect(RedisOptions::new("redis://127.0.0.1:1/,http://x")).await.err().unwrap();
    assert!(err.to_string().contains("http://x is not a Redis URL"), "{err}");
}

/// Two servers on a cluster (`topics_on_every_master`, two topics per
/// master), with tabs of both generations open: a master is killed with
/// SIGKILL; tabs opened during the failover and right after it are
/// acknowledged `subscribed` (never denied) and, soon after the cluster is
/// ok again, every tab and both servers show exactly the open tabs. Then the
/// killed node comes back as a replica and is promoted with `CLUSTER
/// FAILOVER` while more tabs open and some close: the same holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_of_both_generations_survive_a_failover_and_a_promotion() {
    use presence::server::ServerConfig;
    use presence_tests::fleet::{converge, Generation, Tab};
    use presence_tests::ws::Served;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let topics = topics_on_every_master(&cluster, 2);
    let victim = cluster.master_of(&TopicKeys::new("x", &topics[0]).users);
    let mut redis = RedisOptions::new(cluster.urls());
    redis.prefix = format!("t{:08x}", rand::random::<u32>());
    let options =
        presence::Options { heartbeat: Duration::from_millis(1000), ttl: Duration::from_secs(8), ..fast_options() };
    let config = ServerConfig { redis: Some(redis), options, ..ServerConfig::default() };
    let (a, b) = (Served::start(config.clone()).await, Served::start(config).await);
    let servers = [&a, &b];
    let mut tabs = Vec::new();
    for (t, topic) in topics.iter().enumerate() {
        tabs.push(Tab::open(&a, 0, Generation::Current, &format!("before-c{t}"), topic).await);
        tabs.push(Tab::open(&b, 1, Generation::Legacy, &format!("before-l{t}"), topic).await);
    }
    converge(&servers, &mut tabs, &topics, DEADLINE).await;

    // 1. A master killed: tabs open while its replica takes over.
    let mut cluster = cluster;
    let mut killed = cluster.take(victim);
    killed.kill();
    let killed_at = Instant::now();
    let settled = tokio::task::spawn_blocking(move || {
        cluster.wait_settled();
        cluster
    });
    let mut n = 0;
    while !settled.is_finished() || n < 8 {
        let (served, server) = if n % 2 == 0 { (&a, 0) } else { (&b, 1) };
        let generation = if n % 4 < 2 { Generation::Current } else { Generation::Legacy };
        // Mostly the failed master's topics (0 and 1), some elsewhere.
        let topic = &topics[[0, 1, 0, 1, 2, 4][n % 6]];
        tabs.push(Tab::open(served, server, generation, &format!("during-{n}"), topic).await);
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut cluster = settled.await.unwrap();
    let ok_after = killed_at.elapsed();
    let right = converge(&servers, &mut tabs, &topics, DEADLINE * 2).await;
    println!(
        "failover: cluster ok {ok_after:?} after the kill, {n} tabs opened meanwhile and after; \
         every tab and server right {right:?} later"
    );

    // 2. The node back as a replica, then promoted in order (no data lost).
    let cluster = tokio::task::spawn_blocking(move || {
        killed.restart();
        cluster.revive(victim, killed);
        cluster.wait_settled();
        cluster
    })
    .await
    .unwrap();
    let master = cluster.master_of(&TopicKeys::new("x", &topics[0]).users);
    let replica = cluster.replica_of(master);
    cluster.promote(replica);
    let promoted_at = Instant::now();
    for n in 0..6 {
        let served = if n % 2 == 0 { &a } else { &b };
        let generation = if n < 3 { Generation::Current } else { Generation::Legacy };
        tabs.push(Tab::open(served, n % 2, generation, &format!("promoted-{n}"), &topics[n % 2]).await);
        if n % 2 == 1 {
            // And a tab of the first failover closes.
            let i = tabs.iter().position(|t| t.user.starts_with("during-")).unwrap();
            tabs.remove(i).client.close().await;
        }
    }
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_settled();
        cluster
    })
    .await
    .unwrap();
    assert_eq!(cluster.master_of(&TopicKeys::new("x", &topics[0]).users), replica, "the replica took over");
    let right = converge(&servers, &mut tabs, &topics, DEADLINE * 2).await;
    println!(
        "promotion: every tab and server right {right:?} after the cluster settled ({:?} after CLUSTER FAILOVER)",
        promoted_at.elapsed()
    );
}

/// One topic's slot is migrated key by key (`SETSLOT IMPORTING/MIGRATING`,
/// `MIGRATE` per key with pauses, `SETSLOT NODE`) while tabs of both
/// generations open and close on it from two servers: scripts meet `ASK`
/// and `TRYAGAIN` mid-move, yet afterwards every tab and server shows exactly
/// the open tabs, no legacy tab saw a second `join`, and the slot lives on
/// its new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_migrated_key_by_key_under_load_loses_nobody() {
    use presence::server::ServerConfig;
    use presence_tests::fleet::{converge, Generation, Tab};
    use presence_tests::ws::Served;
    let seed = std::env::var("PRESENCE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (PRESENCE_SEED={seed} reproduces the choices)");
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let topics = vec!["moving-room".to_owned()];
    let slot = key_slot(TopicKeys::new("x", &topics[0]).users.as_bytes());
    let from = cluster.master_of_slot(slot);
    let to = cluster.masters().into_iter().find(|m| m.port != from.port).unwrap();
    let mut redis = RedisOptions::new(cluster.urls());
    redis.prefix = format!("t{:08x}", rand::random::<u32>());
    let options =
        presence::Options { heartbeat: Duration::from_millis(500), ttl: Duration::from_secs(8), ..fast_options() };
    let config = ServerConfig { redis: Some(redis), options, ..ServerConfig::default() };
    let (a, b) = (Served::start(config.clone()).await, Served::start(config).await);
    let servers = [&a, &b];
    let mut tabs = Vec::new();
    for n in 0..4 {
        let generation = if n % 2 == 0 { Generation::Current } else { Generation::Legacy };
        tabs.push(Tab::open(servers[n % 2], n % 2, generation, &format!("before-{n}"), &topics[0]).await);
    }
    converge(&servers, &mut tabs, &topics, DEADLINE).await;
    let cluster = std::sync::Arc::new(cluster);
    let migration = {
        let (cluster, to) = (cluster.clone(), to.clone());
        tokio::task::spawn_blocking(move || cluster.migrate_slot_key_by_key(slot, &to, Duration::from_millis(500)))
    };
    let (mut opened, mut closed, mut n) = (0, 0, 0);
    while !migration.is_finished() {
        if !tabs.is_empty() && rng.random_bool(0.4) {
            let i = rng.random_range(0..tabs.len());
            tabs.remove(i).client.close().await;
            closed += 1;
        } else {
            let server = rng.random_range(0..2);
            let generation = if rng.random_bool(0.5) { Generation::Current } else { Generation::Legacy };
            tabs.push(
                Tab::open(servers[server], server, generation, &format!("u{}", rng.random_range(0..12)), &topics[0])
                    .await,
            );
            opened += 1;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
    }
    let moved = migration.await.unwrap();
    let errors = cluster.error_stats();
    assert_eq!(cluster.master_of_slot(slot).port, to.port, "the slot lives on its new master");
    let right = converge(&servers, &mut tabs, &topics, DEADLINE * 2).await;
    println!(
        "migration of slot {slot} ({moved} keys, one at a time): {n} steps ({opened} tabs opened, {closed} closed) \
         meanwhile, the masters answered {errors:?}; every tab and server right {right:?} after the move"
    );
}

/// The event subscriptions of every node are killed (`CLIENT KILL TYPE
/// pubsub`), three times over: each instance subscribes its channels again
/// on the nodes that dropped them (`PUBSUB SHARDNUMSUB` counts both
/// instances again), and events flow again. No heartbeat runs here, so no
/// replica repair can hide a subscription that stayed lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_event_subscriptions_are_made_again_on_every_node() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let topics = topics_on_every_master(&cluster, 2);
    let store = Store::redis_url(&cluster.urls());
    let Store::Redis { prefix, .. } = &store else { unreachable!() };
    let prefix = prefix.clone();
    let (a, b) = (Instance::start(&store, manual_ticks()).await, Instance::start(&store, manual_ticks()).await);
    let mut watchers = Vec::new();
    for topic in &topics {
        watchers.push(a.watcher(topic).await);
        let _ = b.watcher(topic).await;
    }
    let subscribers = |topic: &str| -> i64 {
        let channel = TopicKeys::new(&prefix, topic).channel;
        let port = cluster.master_of(&channel);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        let reply: Vec<redis::Value> = redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(&channel).query(&mut con).unwrap();
        redis::from_redis_value(reply[1].clone()).unwrap()
    };
    for round in 0..3 {
        let mut killed = 0;
        for port in cluster.ports() {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let mut con = client.get_connection().unwrap();
            let n: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut con).unwrap();
            killed += n;
        }
        assert!(killed >= 6, "round {round}: both instances' subscriptions on every master were killed ({killed})");
        for topic in &topics {
            poll::until(&format!("round {round}: both instances subscribe {topic} again"), DEADLINE, async || {
                let n = subscribers(topic);
                poll::when(n == 2, n)
            })
            .await;
        }
        for (t, topic) in topics.iter().enumerate() {
            let user = b.connect(json!({"id": format!("r{round}-t{t}")}));
            b.presence.join(user.id, topic).await.unwrap();
            std::mem::forget(user);
        }
        for (t, watcher) in watchers.iter_mut().enumerate() {
            let key = format!("r{round}-t{t}");
            watcher.wait_for("join", |d| d["key"] == key.as_str()).await;
        }
    }
}
