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
