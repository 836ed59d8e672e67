//! The randomized model check: several engine instances on one real
//! `redis-server` (or on a real three-master Redis Cluster), driven by a
//! seeded random mix of client operations (tabs opened, closed cleanly or
//! dropped, user data changed) and faults, checked against a plain model of
//! who has an open connection. The faults: an instance killed without
//! cleanup or started again, pub/sub connections killed, `clear()`; on one
//! Redis, Redis flushed, restarted empty, or paused while tabs open; on a
//! cluster, a master killed (its replica takes over while tabs open, then it
//! comes back as a replica), a replica promoted with `CLUSTER FAILOVER`, a
//! topic's slot migrated key by key mid-traffic, a master paused while tabs
//! open.
//!
//! After every few steps comes a quiet period, then the check (polled until
//! it holds or a deadline passes; every instance must also be ready, its
//! event stream connected and read again after any interruption, and every
//! dropped connection released):
//! - every user with an open connection, and no other, is listed by Redis
//!   (`list` from each instance) and shown by every observer on every
//!   instance, and by every open tab itself: a join is never lost, so every
//!   open tab that joined is listed within the deadline of the backend being
//!   healthy, and none is left unlisted (the model never sees a denial: one
//!   fails the run);
//! - every observer's event stream is consistent: `join` only for users it
//!   does not show, `leave` only for users it does;
//! - in a round without faults, each observer saw exactly one `join` and one
//!   `leave` per presence transition of the model (or, for a user who left
//!   and joined again at once, possibly an `updated` in place of the pair).
//!
//! Instances run in this process: "killed" drops an engine without any
//! cleanup (its holds must expire), as a crashed process would leave them.
//! Operations within one step run concurrently, at most one per user.

use crate::{fast_options, poll, Client, Instance, RedisCluster, RedisServer, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// One run's size.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub seed: u64,
    pub steps: usize,
    pub instances: usize,
    pub users: usize,
    pub topics: usize,
    /// Steps between two checks.
    pub round: usize,
    /// On a Redis Cluster (three masters, three replicas) instead of one Redis.
    pub cluster: bool,
}

impl Config {
    pub fn new(seed: u64) -> Self {
        Self { seed, steps: 40, instances: 3, users: 12, topics: 3, round: 5, cluster: false }
    }

    /// The same run on a cluster.
    pub fn on_cluster(seed: u64) -> Self {
        Self { cluster: true, topics: 4, ..Self::new(seed) }
    }
}

/// Where the instances keep their state.
enum Redis {
    Single(RedisServer),
    /// `None` only while a fault works on it in a blocking task.
    Cluster(Option<RedisCluster>),
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub operations: usize,
    pub faults: BTreeMap<&'static str, usize>,
    pub checks: usize,
    pub clean_rounds: usize,
}

/// How long a check may take to hold: ttl + heartbeats, with room for
/// reconnect backoff and a loaded machine.
const SETTLE_DEADLINE: Duration = Duration::from_secs(15);

struct Tab {
    client: Client,
    user: usize,
    topic: usize,
}

struct Node {
    instance: Instance,
    tabs: Vec<Tab>,
    /// One observer per topic (a `sync`ed connection).
    observers: Vec<Client>,
}

struct World {
    config: Config,
    rng: StdRng,
    redis: Redis,
    store: Store,
    nodes: Vec<Option<Node>>,
    report: Report,
    /// Transitions the model made this round: (topic, user) -> (joins, leaves).
    transitions: HashMap<(usize, usize), (usize, usize)>,
    /// Per observer (node, topic) and key, the joins and leaves seen at the
    /// last check.
    seen_at_check: HashMap<(usize, usize), HashMap<String, (usize, usize)>>,
    /// Users not to touch again this round (a dropped tab is left by the
    /// heartbeat later; a new tab meanwhile would make the count ambiguous).
    frozen: HashSet<usize>,
    faulty_round: bool,
    /// Replica repairs and re-reads over the live instances at the last
    /// check: a repair (events too late, e.g. a starved machine) or a re-read
    /// (a cluster subscription made again, which can come a while after the
    /// fault that dropped it) shows what changed in between as one change,
    /// so that round's exact counts do not apply.
    repairs_at_check: u64,
    /// A Redis fault happened since the last check: joins may still be
    /// deferred, and a deferred join is made even after a `clear()` (its
    /// connection is still open), so `clear()` waits for a calm round.
    stormy: bool,
}

/// `MODEL_TRACE=1` prints every operation and fault, for replaying a seed.
fn trace(line: impl FnOnce() -> String) {
    if std::env::var_os("MODEL_TRACE").is_some() {
        eprintln!("{}", line());
    }
}

/// One observer (a `sync`ed connection) per topic. Redis may be down right
/// now (a fault just happened): each sync is retried until the deadline.
async fn observe_every_topic(instance: &Instance, topics: usize) -> Result<Vec<Client>, String> {
    let mut observers = Vec::new();
    for t in 0..topics {
        let observer = instance.connect(json!({"id": format!("observer-{t}")}));
        // Kept while the backend cannot answer: listed once it can.
        match instance.presence.sync(observer.id, &topic_name(t)).await {
            Ok(()) | Err(presence::Error::Deferred(_)) => {}
            Err(e) => return Err(format!("sync refused: {e}")),
        }
        observers.push(observer);
    }
    Ok(observers)
}

fn topic_name(t: usize) -> String {
    format!("t{t}")
}

fn user_key(u: usize) -> String {
    format!("u{u}")
}

/// Run one seed. `Err` says what diverged from the model (the caller prints
/// the seed with it).
pub async fn run(config: Config) -> Result<Report, String> {
    let (redis, store) = if config.cluster {
        let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.map_err(|e| e.to_string())?;
        let store = Store::redis_url(&cluster.urls());
        (Redis::Cluster(Some(cluster)), store)
    } else {
        let server = RedisServer::start();
        let store = Store::redis(&server);
        (Redis::Single(server), store)
    };
    let mut world = World {
        config,
        rng: StdRng::seed_from_u64(config.seed),
        redis,
        store,
        nodes: Vec::new(),
        report: Report::default(),
        transitions: HashMap::new(),
        seen_at_check: HashMap::new(),
        frozen: HashSet::new(),
        faulty_round: false,
        repairs_at_check: 0,
        stormy: false,
    };
    for _ in 0..config.instances {
        let node = world.start_node().await?;
        world.nodes.push(Some(node));
    }
    for step in 1..=config.steps {
        trace(|| format!("step {step}"));
        world.step().await?;
        if step % config.round == 0 || step == config.steps {
            world.check().await.map_err(|e| format!("after step {step}: {e}"))?;
        }
    }
    Ok(world.report)
}

impl World {
    async fn start_node(&mut self) -> Result<Node, String> {
        let instance = Instance::start(&self.store, self.options()).await;
        let observers = observe_every_topic(&instance, self.config.topics).await?;
        Ok(Node { instance, tabs: Vec::new(), observers })
    }

    /// Fast heartbeats; on a cluster, a ttl above the time a failover takes
    /// (about two seconds here), so holds outlive it and nobody flaps.
    fn options(&self) -> presence::Options {
        match self.redis {
            Redis::Single(_) => fast_options(),
            Redis::Cluster(_) => presence::Options {
                heartbeat: Duration::from_millis(200),
                ttl: Duration::from_secs(4),
                ..fast_options()
            },
        }
    }

    /// The model: who has an open tab on a live instance, per topic.
    fn expected(&self, topic: usize) -> BTreeSet<String> {
        self.nodes
            .iter()
            .flatten()
            .flat_map(|n| n.tabs.iter())
            .filter(|tab| tab.topic == topic)
            .map(|tab| user_key(tab.user))
            .collect()
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    async fn step(&mut self) -> Result<(), String> {
        if self.rng.random_bool(0.2) {
            self.fault().await?;
        } else {
            self.operations().await?;
        }
        Ok(())
    }

    /// A batch of concurrent client operations, at most one per user.
    async fn operations(&mut self) -> Result<(), String> {
        let before: Vec<BTreeSet<String>> = (0..self.config.topics).map(|t| self.expected(t)).collect();
        let batch = self.rng.random_range(1..=6);
        let mut users: Vec<usize> = (0..self.config.users).filter(|u| !self.frozen.contains(u)).collect::<Vec<_>>();
        let mut joins = Vec::new(); // (node, connection, topic)
        let mut closes = Vec::new(); // (node, client, clean)
        for _ in 0..batch {
            if users.is_empty() {
                break;
            }
            let user = users.swap_remove(self.rng.random_range(0..users.len()));
            let live = self.live();
            let node = live[self.rng.random_range(0..live.len())];
            let tabs_of_user: Vec<(usize, usize)> = live
                .iter()
                .flat_map(|&n| {
                    let node = self.nodes[n].as_ref().unwrap();
                    (0..node.tabs.len()).filter(move |&i| node.tabs[i].user == user).map(move |i| (n, i))
                })
                .collect();
            if !tabs_of_user.is_empty() && self.rng.random_bool(0.5) {
                let (n, i) = tabs_of_user[self.rng.random_range(0..tabs_of_user.len())];
                let tab = self.nodes[n].as_mut().unwrap().tabs.swap_remove(i);
                let clean = self.rng.random_bool(0.7);
                if !clean {
                    self.frozen.insert(user);
                }
                trace(|| {
                    format!("  close u{user} t{} on {n} ({})", tab.topic, if clean { "clean" } else { "dropped" })
                });
                closes.push((n, tab.client, clean));
            } else {
                let topic = self.rng.random_range(0..self.config.topics);
                let version = self.rng.random_range(0..3);
                let node_ref = self.nodes[node].as_mut().unwrap();
                let client = node_ref.instance.connect(json!({"id": user_key(user), "v": version}));
                trace(|| format!("  join u{user} t{topic} v{version} on {node}"));
                joins.push((node, client.id, topic_name(topic)));
                node_ref.tabs.push(Tab { client, user, topic });
            }
        }
        self.report.operations += joins.len() + closes.len();
        let mut calls: Vec<futures::future::BoxFuture<'_, Result<(), String>>> = Vec::new();
        for (n, id, topic) in &joins {
            let presence = &self.nodes[*n].as_ref().unwrap().instance.presence;
            calls.push(Box::pin(async move {
                match presence.join(*id, topic).await {
                    Ok(()) | Err(presence::Error::Deferred(_)) => Ok(()),
                    Err(e) => Err(format!("join refused: {e}")),
                }
            }));
        }
        for (n, client, clean) in &closes {
            let node = self.nodes[*n].as_ref().unwrap();
            calls.push(Box::pin(async move {
                if *clean {
                    let _ = node.instance.presence.hooks().close(client.id).await;
                }
                node.instance.hub.disconnect(client.id);
                Ok(())
            }));
        }
        for result in futures::future::join_all(calls).await {
            result?;
        }
        for (t, before) in before.iter().enumerate() {
            let after = self.expected(t);
            for user in 0..self.config.users {
                let key = user_key(user);
                let entry = self.transitions.entry((t, user)).or_default();
                match (before.contains(&key), after.contains(&key)) {
                    (false, true) => entry.0 += 1,
                    (true, false) => entry.1 += 1,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    async fn fault(&mut self) -> Result<(), String> {
        self.faulty_round = true;
        let live = self.live();
        let dead: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].is_none()).collect();
        let cluster = matches!(self.redis, Redis::Cluster(_));
        let kind = match (self.rng.random_range(0..7), cluster) {
            (0, _) if live.len() > 1 => "kill instance",
            (0 | 1, _) if !dead.is_empty() => "restart instance",
            (1, _) => "kill pubsub",
            (2, false) => "flushall",
            (3, false) => "restart redis",
            (4, false) => "pause redis",
            (2, true) => "kill master",
            (3, true) => "promote replica",
            (4, true) => {
                if self.rng.random_bool(0.5) {
                    "migrate slot"
                } else {
                    "pause master"
                }
            }
            (5, _) if !self.stormy => "clear",
            _ => "kill pubsub",
        };
        self.stormy |= !matches!(kind, "kill instance" | "restart instance" | "clear");
        *self.report.faults.entry(kind).or_default() += 1;
        trace(|| format!("  fault: {kind}"));
        match kind {
            "kill instance" => {
                let n = live[self.rng.random_range(0..live.len())];
                trace(|| format!("  (instance {n})"));
                // No cleanup at all: its holds must expire.
                self.nodes[n] = None;
                self.forget_observers(n);
            }
            "restart instance" => {
                let n = dead[self.rng.random_range(0..dead.len())];
                let node = self.start_node().await?;
                self.nodes[n] = Some(node);
            }
            "kill pubsub" => {
                let before = self.resyncs();
                for port in self.ports() {
                    let client =
                        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
                    let mut con = client.get_connection().map_err(|e| e.to_string())?;
                    let _: redis::RedisResult<i64> =
                        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut con);
                }
                if !cluster {
                    self.await_resyncs(before).await?;
                }
            }
            "flushall" => {
                let mut con = self.single().connection();
                let _: () = redis::cmd("FLUSHALL").query(&mut con).map_err(|e| e.to_string())?;
            }
            "restart redis" => {
                let before = self.resyncs();
                self.single_mut().restart();
                self.await_resyncs(before).await?;
            }
            "pause redis" => {
                self.single().pause();
                let pause = Duration::from_millis(self.rng.random_range(100..900));
                let (_, result) = tokio::join!(tokio::time::sleep(pause), self.operations());
                self.single().resume();
                result?;
            }
            "kill master" => {
                // Tabs open and close while the replica takes over; then the
                // node comes back, as a replica of its successor.
                let victim = self.master_of_topic();
                trace(|| format!("  (master {victim})"));
                self.while_cluster(move |cluster| {
                    let mut node = cluster.take(victim);
                    node.kill();
                    cluster.wait_settled_without(victim);
                    node.restart();
                    cluster.revive(victim, node);
                    cluster.wait_settled();
                })
                .await?;
            }
            "promote replica" => {
                let master = self.master_of_topic();
                self.while_cluster(move |cluster| {
                    let replica = cluster.replica_of(master);
                    cluster.promote(replica);
                    cluster.wait_settled();
                })
                .await?;
            }
            "migrate slot" => {
                let topic = self.rng.random_range(0..self.config.topics);
                let slot = presence::backend::redis::key_slot(
                    presence::backend::redis::TopicKeys::new("x", &topic_name(topic)).users.as_bytes(),
                );
                let target = self.rng.random_range(0..3usize);
                trace(|| format!("  (topic {topic}, slot {slot})"));
                self.while_cluster(move |cluster| {
                    let from = cluster.master_of_slot(slot);
                    let to = cluster.masters().into_iter().filter(|m| m.port != from.port).nth(target % 2).unwrap();
                    cluster.migrate_slot_key_by_key(slot, &to, Duration::from_millis(50));
                    cluster.wait_settled();
                })
                .await?;
            }
            "pause master" => {
                let master = self.master_of_topic();
                let pause = Duration::from_millis(self.rng.random_range(100..900));
                trace(|| format!("  (master {master} for {pause:?})"));
                self.while_cluster(move |cluster| {
                    cluster.pause(master);
                    std::thread::sleep(pause);
                    cluster.resume(master);
                })
                .await?;
            }
            "clear" => self.clear().await?,
            _ => unreachable!(),
        }
        Ok(())
    }

    fn single(&self) -> &RedisServer {
        match &self.redis {
            Redis::Single(server) => server,
            Redis::Cluster(_) => unreachable!("a one-Redis fault on a cluster"),
        }
    }

    fn single_mut(&mut self) -> &mut RedisServer {
        match &mut self.redis {
            Redis::Single(server) => server,
            Redis::Cluster(_) => unreachable!("a one-Redis fault on a cluster"),
        }
    }

    /// The ports of every Redis node.
    fn ports(&self) -> Vec<u16> {
        match &self.redis {
            Redis::Single(server) => vec![server.port()],
            Redis::Cluster(cluster) => cluster.as_ref().expect("the cluster is here").ports(),
        }
    }

    /// The master of a random topic.
    fn master_of_topic(&mut self) -> u16 {
        let topic = topic_name(self.rng.random_range(0..self.config.topics));
        let Redis::Cluster(Some(cluster)) = &self.redis else { unreachable!("a cluster fault on one Redis") };
        cluster.master_of(&presence::backend::redis::TopicKeys::new("x", &topic).users)
    }

    /// Run `fault` on the cluster (blocking, off the runtime) while batches
    /// of client operations go on, until it is done.
    async fn while_cluster(&mut self, fault: impl FnOnce(&mut RedisCluster) + Send + 'static) -> Result<(), String> {
        let Redis::Cluster(slot) = &mut self.redis else { unreachable!("a cluster fault on one Redis") };
        let mut cluster = slot.take().expect("the cluster is here");
        let task = tokio::task::spawn_blocking(move || {
            fault(&mut cluster);
            cluster
        });
        while !task.is_finished() {
            self.operations().await?;
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(50..250))).await;
        }
        let cluster = task.await.map_err(|e| format!("the cluster fault panicked: {e}"))?;
        let Redis::Cluster(slot) = &mut self.redis else { unreachable!() };
        *slot = Some(cluster);
        Ok(())
    }

    /// `clear()` from one instance: everything is gone everywhere; tabs and
    /// observers are dropped by every engine, so the test drops its own and
    /// observes afresh once each instance has let go of its topics.
    async fn clear(&mut self) -> Result<(), String> {
        let live = self.live();
        let n = live[self.rng.random_range(0..live.len())];
        // Redis may still be coming back from an earlier fault.
        let presence = &self.nodes[n].as_ref().unwrap().instance.presence;
        poll::try_until("clear() succeeds", SETTLE_DEADLINE, || presence.clear()).await?;
        for &i in &live {
            let node = self.nodes[i].as_mut().unwrap();
            for tab in node.tabs.drain(..) {
                node.instance.hub.disconnect(tab.client.id);
            }
            poll::try_until(&format!("instance {i} has no topics after clear()"), SETTLE_DEADLINE, async || {
                let topics = node.instance.presence.local_topics();
                poll::when(topics == 0, topics)
            })
            .await?;
            for observer in node.observers.drain(..) {
                node.instance.hub.disconnect(observer.id);
            }
            self.forget_observers(i);
            let node = self.nodes[i].as_mut().unwrap();
            node.observers = observe_every_topic(&node.instance, self.config.topics).await?;
        }
        Ok(())
    }

    /// Replica repairs and re-reads, summed over the live instances.
    fn repairs(&self) -> u64 {
        self.live()
            .into_iter()
            .map(|n| self.nodes[n].as_ref().unwrap().instance.presence.stats())
            .map(|stats| stats.repairs + stats.resyncs)
            .sum()
    }

    /// Completed resyncs per live instance.
    fn resyncs(&self) -> Vec<(usize, u64)> {
        let count = |n: &Node| n.instance.presence.stats().resyncs;
        self.live().into_iter().map(|i| (i, count(self.nodes[i].as_ref().unwrap()))).collect()
    }

    /// Wait until every instance noticed its event stream broke and read its
    /// topics again, so the fault is over before the round's next step.
    async fn await_resyncs(&self, before: Vec<(usize, u64)>) -> Result<(), String> {
        for (i, count) in before {
            let node = self.nodes[i].as_ref().unwrap();
            poll::try_until(
                &format!("instance {i} resyncs after its event stream broke"),
                SETTLE_DEADLINE,
                async || {
                    let resyncs = node.instance.presence.stats().resyncs;
                    poll::when(resyncs > count, resyncs)
                },
            )
            .await?;
        }
        Ok(())
    }

    fn forget_observers(&mut self, n: usize) {
        self.seen_at_check.retain(|(node, _), _| *node != n);
    }

    /// Wait for the quiet state and compare it with the model.
    async fn check(&mut self) -> Result<(), String> {
        self.report.checks += 1;
        let mut fatal = None;
        let settled = poll::try_until("the state settles", SETTLE_DEADLINE, async || match self.compare().await {
            Err(Fatal(e)) => {
                fatal = Some(e);
                Ok(())
            }
            Err(NotYet(e)) => Err(e),
            Ok(()) => Ok(()),
        })
        .await;
        if let Some(e) = fatal {
            return Err(e);
        }
        settled?;
        // Exact transition counts, for rounds without faults, repairs or re-reads.
        let repairs = self.repairs();
        let clean = !self.faulty_round && repairs == self.repairs_at_check;
        self.repairs_at_check = repairs;
        if clean {
            self.report.clean_rounds += 1;
        }
        let topics = self.config.topics;
        for n in self.live() {
            for t in 0..topics {
                let observer = &mut self.nodes[n].as_mut().unwrap().observers[t];
                let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
                for e in observer.events("join") {
                    if e["topic"] == format!("__presence:{}", topic_name(t)) {
                        counts.entry(e["data"]["key"].as_str().unwrap_or_default().to_owned()).or_default().0 += 1;
                    }
                }
                for e in observer.events("leave") {
                    if e["topic"] == format!("__presence:{}", topic_name(t)) {
                        counts.entry(e["data"]["key"].as_str().unwrap_or_default().to_owned()).or_default().1 += 1;
                    }
                }
                if let (true, Some(before)) = (clean, self.seen_at_check.get(&(n, t))) {
                    for u in 0..self.config.users {
                        let key = user_key(u);
                        let now = counts.get(&key).copied().unwrap_or_default();
                        let then = before.get(&key).copied().unwrap_or_default();
                        let seen = (now.0 - then.0, now.1 - then.1);
                        let expected = self.transitions.get(&(t, u)).copied().unwrap_or_default();
                        // Never more than the model made (no transition is
                        // announced twice). Fewer only by whole leave-join
                        // pairs: a user who left on one instance and joined
                        // again on this one, whose join's reply overtook the
                        // other instance's leave event, is shown `updated`
                        // (or nothing, with the same data) — the view stays
                        // right, and a flap after Redis lost its data is
                        // avoided the same way.
                        let coalesced =
                            seen.0 <= expected.0 && seen.1 <= expected.1 && expected.0 - seen.0 == expected.1 - seen.1;
                        if !coalesced {
                            return Err(format!(
                                "observer on instance {n}, topic {t}: {key} shown (joins, leaves) {seen:?}, \
                                 the model made {expected:?}"
                            ));
                        }
                    }
                }
                self.seen_at_check.insert((n, t), counts);
            }
        }
        self.transitions.clear();
        self.frozen.clear();
        self.faulty_round = false;
        self.stormy = false;
        Ok(())
    }

    async fn compare(&mut self) -> Result<(), Mismatch> {
        for n in self.live() {
            let presence = &self.nodes[n].as_ref().unwrap().instance.presence;
            if let Some(reason) = presence.unready_reason() {
                return Err(NotYet(format!("instance {n} is not ready: {reason}")));
            }
            if presence.is_resyncing() {
                return Err(NotYet(format!("instance {n} is still reading its topics again")));
            }
            // Dropped tabs are released by the heartbeat: until then a user
            // still held through them would hide the next round's transitions.
            let node = self.nodes[n].as_ref().unwrap();
            let open = node.tabs.len() + node.observers.len();
            if presence.connections() != open {
                return Err(NotYet(format!(
                    "instance {n} tracks {} connections, {open} are open",
                    presence.connections()
                )));
            }
        }
        for t in 0..self.config.topics {
            let expected = self.expected(t);
            for n in self.live() {
                let node = self.nodes[n].as_mut().unwrap();
                let listed: BTreeSet<String> = match node.instance.presence.list(&topic_name(t)).await {
                    Ok(members) => members.into_iter().map(|m| m.key).collect(),
                    Err(e) => return Err(NotYet(format!("list failed: {e}"))),
                };
                if listed != expected {
                    return Err(NotYet(format!("Redis lists {listed:?} on topic {t}, the model {expected:?}")));
                }
                let shown = node.observers[t]
                    .view(&topic_name(t))
                    .map_err(|e| Fatal(format!("observer on instance {n}, topic {t}: inconsistent stream: {e}")))?;
                if shown != expected {
                    return Err(NotYet(format!(
                        "observer on instance {n} shows {shown:?} on topic {t}, the model {expected:?}"
                    )));
                }
                // Every open tab was listed (never left unlisted) and shows
                // the topic as the model has it.
                for tab in node.tabs.iter_mut().filter(|tab| tab.topic == t) {
                    let shown = tab.client.view(&topic_name(t)).map_err(|e| {
                        Fatal(format!("tab of u{} on instance {n}, topic {t}: inconsistent stream: {e}", tab.user))
                    })?;
                    if shown != expected {
                        return Err(NotYet(format!(
                            "tab of u{} on instance {n} shows {shown:?} on topic {t}, the model {expected:?}",
                            tab.user
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

enum Mismatch {
    /// May still converge.
    NotYet(String),
    /// Can never be undone.
    Fatal(String),
}
use Mismatch::{Fatal, NotYet};
