//! A real Redis Cluster: six `redis-server`s (three masters, three replicas)
//! on free ports, joined with `redis-cli --cluster create`. Tests can kill a
//! master (its replica takes over), move slots, and look at which node holds
//! what. Dropping it kills every node; [`shared_cluster`] is one cluster a
//! whole test binary shares, its nodes killed when the binary exits.

use super::redis_server::{RedisServer, Spec};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// How long the cluster may take to agree on its state.
const SETTLE: Duration = Duration::from_secs(30);

pub struct RedisCluster {
    nodes: BTreeMap<u16, RedisServer>,
    access: Access,
}

/// How clients reach the nodes: plain, or TLS with an ACL user.
#[derive(Clone, Default)]
struct Access {
    /// (CA certificate PEM, its path, user, password).
    tls: Option<(Vec<u8>, String, String, String)>,
}

impl Access {
    fn url(&self, port: u16) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{port}/"),
            Some((_, _, user, password)) => format!("rediss://{user}:{password}@127.0.0.1:{port}/"),
        }
    }

    fn client(&self, port: u16) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url(port)).unwrap(),
            Some((ca, ..)) => {
                let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) };
                redis::Client::build_with_tls(self.url(port), certificates).unwrap()
            }
        }
    }

    /// `redis-cli` options to reach a node.
    fn cli(&self) -> Vec<String> {
        match &self.tls {
            None => Vec::new(),
            Some((_, ca_path, user, password)) => {
                ["--tls", "--cacert", ca_path, "--user", user, "--pass", password, "--no-auth-warning"]
                    .map(str::to_owned)
                    .to_vec()
            }
        }
    }
}

/// A port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = rand::random_range(20000..30000u16);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
}

/// One master as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
pub struct Master {
    pub port: u16,
    pub id: String,
    pub slots: usize,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_spec(false, None)
    }

    /// A cluster that speaks only TLS (clients, cluster bus, replication),
    /// with one ACL user, `user`/`password`, and the default user off.
    pub fn start_tls(certificates: &super::tls::Certificates, user: &str, password: &str) -> Self {
        Self::start_spec(false, Some((certificates, user, password)))
    }

    fn start_spec(die_with_thread: bool, tls: Option<(&super::tls::Certificates, &str, &str)>) -> Self {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let port = free_cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            // The other shards keep serving while one fails over.
            "--cluster-require-full-coverage",
            "no",
            "--cluster-replica-validity-factor",
            "0",
        ]
        .map(str::to_owned)
        .to_vec();
        let access = Access {
            tls: tls.map(|(certs, user, password)| {
                (certs.ca_pem(), certs.path("ca.crt"), user.to_owned(), password.to_owned())
            }),
        };
        let nodes = ports
            .iter()
            .map(|&port| {
                let mut args = args.clone();
                args.extend(["--cluster-port".to_owned(), (port + 10000).to_string()]);
                if let Some((certs, user, password)) = tls {
                    args.extend(certs.server_args(port, user, password));
                    args.extend(
                        ["--tls-cluster", "yes", "--tls-replication", "yes", "--masteruser", user].map(str::to_owned),
                    );
                    args.extend(["--masterauth".to_owned(), password.to_owned()]);
                }
                let spec = Spec { args, die_with_thread, tcp_probe: tls.is_some() };
                (port, RedisServer::start_with(port, spec))
            })
            .collect();
        let cluster = Self { nodes, access };
        let output = Command::new("redis-cli")
            .args(cluster.access.cli())
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_settled();
        cluster
    }

    /// Comma-separated URLs of every live node: the seed list `--redis` takes.
    pub fn urls(&self) -> String {
        self.nodes.keys().map(|&p| self.access.url(p)).collect::<Vec<_>>().join(",")
    }

    /// One live node's URL (a single seed: the backend finds the cluster).
    pub fn seed_url(&self) -> String {
        self.access.url(*self.nodes.keys().next().expect("a live node"))
    }

    fn try_query<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> Option<T> {
        let client = self.access.client(port);
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        cmd.query(&mut conn).ok()
    }

    /// Every live node sees the cluster as ok, the same masters cover all
    /// slots, and every master has a replica in sync.
    pub fn settled(&self) -> bool {
        let views: Vec<Option<Vec<Master>>> = self.nodes.keys().map(|&p| self.masters_seen_by(p)).collect();
        let Some(Some(first)) = views.first() else { return false };
        let ports = |m: &Vec<Master>| m.iter().map(|m| (m.port, m.slots)).collect::<Vec<_>>();
        let agreed = views.iter().all(|v| v.as_ref().is_some_and(|v| ports(v) == ports(first)));
        let covered = first.iter().map(|m| m.slots).sum::<usize>() == 16384;
        let ok = self.nodes.keys().all(|&p| {
            self.try_query::<String>(p, redis::cmd("CLUSTER").arg("INFO"))
                .is_some_and(|info| info.contains("cluster_state:ok"))
        });
        let replicas_synced = self.nodes.keys().filter(|p| !first.iter().any(|m| m.port == **p)).all(|&p| {
            self.try_query::<String>(p, redis::cmd("INFO").arg("replication"))
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
        agreed && covered && ok && replicas_synced
    }

    pub fn wait_settled(&self) {
        super::poll::until_blocking("the cluster settles", SETTLE, || {
            if self.settled() {
                Ok(())
            } else {
                Err(format!("{:#?}", self.masters()))
            }
        });
    }

    fn masters_seen_by(&self, port: u16) -> Option<Vec<Master>> {
        let nodes: String = self.try_query(port, redis::cmd("CLUSTER").arg("NODES"))?;
        let mut masters: Vec<Master> = nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") || flags.contains("noaddr") {
                    return None;
                }
                let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let slots = fields[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|range| match range.split_once('-') {
                        Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
                        None => 1,
                    })
                    .sum();
                Some(Master { port, id: fields[0].to_owned(), slots })
            })
            .filter(|m| m.slots > 0)
            .collect();
        masters.sort_by_key(|m| m.port);
        Some(masters)
    }

    /// The masters serving slots, as a live node sees them.
    pub fn masters(&self) -> Vec<Master> {
        self.nodes.keys().find_map(|&p| self.masters_seen_by(p)).unwrap_or_default()
    }

    /// The master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = *self.nodes.keys().next().expect("a live node");
        let slot: u16 = self.try_query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).expect("CLUSTER KEYSLOT");
        let slots: redis::Value = self.try_query(port, redis::cmd("CLUSTER").arg("SLOTS")).expect("CLUSTER SLOTS");
        let redis::Value::Array(ranges) = slots else { panic!("CLUSTER SLOTS: {slots:?}") };
        for range in ranges {
            let redis::Value::Array(fields) = range else { continue };
            let (redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(master)) =
                (&fields[0], &fields[1], &fields[2])
            else {
                continue;
            };
            if (*a..=*b).contains(&(slot as i64)) {
                let redis::Value::Int(port) = master[1] else { panic!("port") };
                return port as u16;
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// How many keys each master holds.
    pub fn keys_per_master(&self) -> BTreeMap<u16, u64> {
        self.masters()
            .iter()
            .map(|m| (m.port, self.try_query(m.port, &redis::cmd("DBSIZE")).expect("DBSIZE")))
            .collect()
    }

    /// SIGKILL one node (no shutdown, no save): its replica must take over.
    pub fn kill(&mut self, port: u16) {
        let mut node = self.nodes.remove(&port).expect("a node of this cluster");
        node.kill();
    }

    /// The master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> Master {
        let port = *self.nodes.keys().next().expect("a live node");
        let slots: redis::Value = self.try_query(port, redis::cmd("CLUSTER").arg("SLOTS")).expect("CLUSTER SLOTS");
        let redis::Value::Array(ranges) = slots else { panic!("CLUSTER SLOTS: {slots:?}") };
        for range in ranges {
            let redis::Value::Array(fields) = range else { continue };
            let (redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(master)) =
                (&fields[0], &fields[1], &fields[2])
            else {
                continue;
            };
            if (*a..=*b).contains(&(slot as i64)) {
                let redis::Value::Int(port) = master[1] else { panic!("port") };
                let port = port as u16;
                return self.masters().into_iter().find(|m| m.port == port).expect("a master of the table");
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// Move `slot` to the master `to` the way `redis-cli --cluster reshard`
    /// does, one key at a time with `pause` between keys, so that traffic
    /// meets the slot half moved: `ASK` redirections for keys already gone,
    /// `TRYAGAIN` for a script whose keys are on both sides. Returns how
    /// many keys it moved.
    pub fn migrate_slot_key_by_key(&self, slot: u16, to: &Master, pause: Duration) -> usize {
        let from = self.master_of_slot(slot);
        assert_ne!(from.port, to.port, "slot {slot} is already on {}", to.port);
        let run = |port: u16, cmd: &mut redis::Cmd| {
            let client = self.access.client(port);
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(2)).expect("connect to a node");
            cmd.query::<redis::Value>(&mut conn).unwrap_or_else(|e| panic!("{cmd:?} on {port}: {e}"))
        };
        run(to.port, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("IMPORTING").arg(&from.id));
        run(from.port, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("MIGRATING").arg(&to.id));
        let mut moved = 0;
        loop {
            let keys = run(from.port, redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1));
            let redis::Value::Array(keys) = keys else { panic!("GETKEYSINSLOT: {keys:?}") };
            let Some(redis::Value::BulkString(key)) = keys.into_iter().next() else { break };
            let mut migrate = redis::cmd("MIGRATE");
            migrate.arg("127.0.0.1").arg(to.port).arg("").arg(0).arg(5000).arg("REPLACE");
            if let Some((_, _, user, password)) = &self.access.tls {
                migrate.arg("AUTH2").arg(user).arg(password);
            }
            migrate.arg("KEYS").arg(key);
            run(from.port, &mut migrate);
            moved += 1;
            std::thread::sleep(pause);
        }
        for port in [to.port, from.port].into_iter().chain(self.masters().iter().map(|m| m.port)) {
            run(port, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&to.id));
        }
        moved
    }

    /// Promote `replica_port` (a replica) with `CLUSTER FAILOVER`: its master
    /// steps down in order, nothing is lost.
    pub fn promote(&self, replica_port: u16) {
        let _: redis::Value = self
            .try_query(replica_port, redis::cmd("CLUSTER").arg("FAILOVER"))
            .unwrap_or_else(|| panic!("CLUSTER FAILOVER on {replica_port}"));
    }

    /// The replica of the master on `master_port`.
    pub fn replica_of(&self, master_port: u16) -> u16 {
        let master = self.masters().into_iter().find(|m| m.port == master_port).expect("a master");
        let nodes: String = self.try_query(master_port, redis::cmd("CLUSTER").arg("NODES")).expect("CLUSTER NODES");
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let follows = fields.get(3) == Some(&master.id.as_str()) && !fields.get(2)?.contains("fail");
                follows.then(|| fields[1].split(['@', ':']).nth(1)?.parse().ok())?
            })
            .next()
            .unwrap_or_else(|| panic!("master {master_port} has no live replica:\n{nodes}"))
    }

    /// Start a killed node again on its port, with its cluster
    /// configuration: it rejoins as a replica of the master that replaced it.
    pub fn revive(&mut self, port: u16, node: RedisServer) {
        self.nodes.insert(port, node);
    }

    /// Take a node out, to stop it (SIGSTOP/SIGKILL) and give it back with
    /// [`RedisCluster::revive`].
    pub fn take(&mut self, port: u16) -> RedisServer {
        self.nodes.remove(&port).expect("a node of this cluster")
    }

    /// Errors the masters answered, by kind (`ASK`, `TRYAGAIN`, `MOVED`…),
    /// from `INFO errorstats`.
    pub fn error_stats(&self) -> BTreeMap<String, u64> {
        let mut stats = BTreeMap::new();
        for master in self.masters() {
            let info: String = self.try_query(master.port, redis::cmd("INFO").arg("errorstats")).unwrap_or_default();
            for line in info.lines() {
                let Some((kind, rest)) = line.strip_prefix("errorstat_").and_then(|l| l.split_once(":count=")) else {
                    continue;
                };
                *stats.entry(kind.to_owned()).or_default() += rest.trim().parse::<u64>().unwrap_or(0);
            }
        }
        stats
    }

    /// The ports of every live node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.keys().copied().collect()
    }

    /// SIGSTOP one node: it stops answering, its connections stay open.
    pub fn pause(&self, port: u16) {
        self.nodes[&port].pause();
    }

    /// SIGCONT a node paused with [`RedisCluster::pause`].
    pub fn resume(&self, port: u16) {
        self.nodes[&port].resume();
    }

    /// Wait until the live nodes agree and cover every slot, without
    /// asking every master for a synced replica (one was just lost).
    pub fn wait_settled_without(&self, lost: u16) {
        super::poll::until_blocking("the cluster fails over", SETTLE, || {
            let masters = self.masters();
            let covered = masters.iter().map(|m| m.slots).sum::<usize>() == 16384;
            let ok = self.nodes.keys().all(|&p| {
                self.try_query::<String>(p, redis::cmd("CLUSTER").arg("INFO"))
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            super::poll::when(covered && ok && masters.iter().all(|m| m.port != lost), masters)
        });
    }

    /// Run `redis-cli --cluster <args…>` against a live node; panics with
    /// its output when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = *self.nodes.keys().next().expect("a live node");
        let output = Command::new("redis-cli")
            .args(self.access.cli())
            .arg("--cluster")
            .arg(args[0])
            .arg(format!("127.0.0.1:{port}"))
            .args(&args[1..])
            .output()
            .expect("redis-cli");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "redis-cli --cluster {args:?} failed:\n{text}");
        text
    }
}

/// One cluster for every test of this binary that only needs a healthy one
/// (each uses its own key prefix). Its nodes are started by a thread that
/// lives as long as the process, and the kernel kills them when it ends.
pub fn shared_cluster() -> &'static str {
    static URLS: OnceLock<String> = OnceLock::new();
    URLS.get_or_init(|| {
        remove_dirs_of_dead_runs();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cluster = RedisCluster::start_spec(true, None);
            tx.send(cluster.urls()).expect("test thread waits");
            // Keep the nodes (and this thread, their kernel-side parent).
            std::mem::forget(cluster);
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the shared cluster started")
    })
}

/// Shared clusters are never dropped, so their directories stay behind:
/// remove the ones whose test process is gone.
fn remove_dirs_of_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("presence-redis-").and_then(|rest| rest.rsplit('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
