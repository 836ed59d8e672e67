//! Server benchmark: two `presenced` processes (release build, next to this
//! binary) on one Redis, driven by WebSocket clients over loopback.

use super::percentiles;
use futures::{SinkExt, StreamExt};
use presence::backend::redis::{RedisBackend, RedisOptions};
use presence::{Hub, Options, Presence};
use presence_tests::RedisServer;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub(crate) struct Presenced {
    child: Child,
    pub port: u16,
}

impl Presenced {
    pub async fn start(redis: &str) -> Self {
        Self::start_with(redis, &[]).await
    }

    /// With extra flags (they win over the defaults above them).
    pub async fn start_with(redis: &str, extra: &[&str]) -> Self {
        let binary = std::env::current_exe().unwrap().with_file_name("presenced");
        assert!(binary.exists(), "build it first: cargo build --release -p presence --bin presenced");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--redis", redis, "--send-queue-bytes", "67108864"])
            .args(["--max-connections", "100000", "--max-connections-per-address", "100000"])
            .args(["--max-pending-per-address", "100000"])
            .args(["--messages-per-second", "1000", "--redis-timeout-ms", "10000"])
            // Two servers, Redis and this load generator share the machine's
            // cores: one worker each saves the handoffs between idle threads.
            .args(["--worker-threads", "1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "presenced did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, port }
    }

    /// CPU seconds (user + system) the process has used so far.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
    }
}

impl Presenced {
    /// SIGKILL: no goodbye, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Presenced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ
}

/// The processes of one run whose CPU the timed phase splits between.
struct Processes<'a> {
    servers: [&'a Presenced; 2],
    redis: u32,
}

impl Processes<'_> {
    /// CPU seconds so far: this load generator, both servers, Redis.
    fn cpu(&self) -> [f64; 3] {
        let servers = self.servers.iter().map(|s| s.cpu_seconds()).sum();
        [cpu_seconds(std::process::id()), servers, cpu_seconds(self.redis)]
    }
}

/// A client task: connects (as a current client, `hello` first, if
/// `current`), optionally subscribes, reports its first `list` or
/// `presence_state` and forwards every `join` key it sees; keeps reading
/// (and answering pings) until dropped.
pub(crate) struct Client {
    pub outgoing: mpsc::UnboundedSender<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn client(
    port: u16,
    id: &str,
    topic: Option<String>,
    listed: Option<oneshot::Sender<()>>,
    joins: Option<mpsc::UnboundedSender<(String, Instant)>>,
    current: bool,
) -> Client {
    // Browsers send WebSocket frames without Nagle's delay; so do these clients.
    let url = format!("ws://127.0.0.1:{port}/ws?id={id}&name={id}");
    // tungstenite zeroes its whole free read buffer before every read: with
    // the default 128 KiB that memset was 40% of the load generator's CPU.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.expect("connect");
    let (mut sink, mut stream) = ws.split();
    let (outgoing, mut rx) = mpsc::unbounded_channel::<Message>();
    if current {
        let _ = outgoing.send(Message::Text(json!({"type": "hello", "caps": ["batch"]}).to_string().into()));
    }
    if let Some(topic) = topic {
        let _ = outgoing.send(Message::Text(json!({"type": "subscribe", "topic": topic}).to_string().into()));
    }
    let task = tokio::spawn(async move {
        let mut listed = listed;
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(message) => if sink.send(message).await.is_err() { return },
                    None => return,
                },
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        // Parse only what this client reports on: the load
                        // generator must not be the bottleneck.
                        if listed.is_some()
                            && (text.contains(r#""event":"list""#) || text.contains(r#""event":"presence_state""#))
                        {
                            if let Some(tx) = listed.take() {
                                let _ = tx.send(());
                            }
                            continue;
                        }
                        let Some(joins) = joins.as_ref().filter(|_| text.contains(r#""event":"join""#)) else {
                            continue;
                        };
                        let envelope: Value = serde_json::from_str(&text).unwrap_or_default();
                        let _ = joins.send((envelope["data"]["key"].as_str().unwrap_or("").to_owned(), Instant::now()));
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    });
    Client { outgoing, task }
}

/// `n` connected clients of one generation (alternating instances), each
/// with the receiver that fires on its first `list` (or `presence_state`).
async fn connect(ports: [u16; 2], n: usize, tag: &str, current: bool) -> Vec<(Client, oneshot::Receiver<()>)> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let (tx, rx) = oneshot::channel();
            (client(ports[i % 2], &format!("{tag}{i}"), None, Some(tx), None, current).await, rx)
        })
        .buffer_unordered(256)
        .collect()
        .await
}

/// Have the `i`th client join `{topics}-topic-{i / 100}`; returns the
/// clients, joins/s from the first subscribe until every client had its list
/// (or state), and the CPU each process spent per join in that window (µs:
/// load generator, servers, Redis).
async fn join_all(
    processes: &Processes<'_>,
    connected: Vec<(Client, oneshot::Receiver<()>)>,
    topics: &str,
) -> (Vec<Client>, f64, [f64; 3]) {
    let n = connected.len();
    let (clients, pending): (Vec<Client>, Vec<_>) = connected.into_iter().unzip();
    let cpu_before = processes.cpu();
    let started = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        let subscribe = json!({"type": "subscribe", "topic": format!("{topics}-topic-{}", i / 100)}).to_string();
        c.outgoing.send(Message::Text(subscribe.into())).unwrap();
    }
    for rx in pending {
        rx.await.expect("list received");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu_after = processes.cpu();
    let per_join = std::array::from_fn(|i| (cpu_after[i] - cpu_before[i]) * 1e6 / n as f64);
    (clients, rate, per_join)
}

/// join → `join` latency, seen by an observer on the other instance.
async fn join_latency(ports: [u16; 2], samples: usize) -> (f64, f64) {
    let (joins_tx, mut joins) = mpsc::unbounded_channel();
    let (tx, rx) = oneshot::channel();
    let observer = client(ports[1], "observer", Some("__presence:probe".into()), Some(tx), Some(joins_tx), false).await;
    rx.await.unwrap();
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let key = format!("probe{i}");
        let probe = client(ports[0], &key, None, None, None, false).await;
        let sent = Instant::now();
        probe.outgoing.send(Message::Text(json!({"type": "subscribe", "topic": "probe"}).to_string().into())).unwrap();
        loop {
            let (seen, at) =
                tokio::time::timeout(Duration::from_secs(10), joins.recv()).await.expect("join seen").unwrap();
            if seen == key {
                latencies.push(at - sent);
                break;
            }
        }
        let _ = probe.outgoing.send(Message::Close(None));
        drop(probe);
    }
    drop(observer);
    percentiles(&mut latencies)
}

/// Frames both servers have queued for their clients so far (`/metrics`).
async fn frames_sent(ports: [u16; 2]) -> u64 {
    let mut total = 0;
    for port in ports {
        let (_, metrics) = presence_tests::ws::http_get(([127, 0, 0, 1], port).into(), "/metrics").await;
        let line = metrics.lines().find(|l| l.starts_with("presence_frames_sent_total ")).unwrap_or("x 0");
        total += line.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

/// One generation's `n` joiners, 100 per topic, and what they cost.
struct Generation {
    /// The joiners, and the topics' earlier members if any.
    crowd: Vec<Client>,
    joins_per_second: f64,
    frames_per_join: f64,
    /// CPU both servers spent per join (µs), connect to state.
    server_cpu_per_join: f64,
    /// CPU per join (µs) from the first subscribe to the last state: load
    /// generator, both servers, Redis.
    timed_cpu_per_join: [f64; 3],
}

/// `n` clients of one generation join topics of 100: empty topics, or
/// (`watched`) topics whose 100 members joined first, untimed.
async fn generation(processes: &Processes<'_>, n: usize, tag: &str, current: bool, watched: bool) -> Generation {
    let ports = processes.servers.map(|s| s.port);
    let mut crowd = Vec::new();
    if watched {
        let members = connect(ports, n, &format!("{tag}m"), current).await;
        crowd = join_all(processes, members, tag).await.0;
    }
    let before = frames_sent(ports).await;
    let cpu_before = processes.cpu()[1];
    let joiners = connect(ports, n, tag, current).await;
    let (joiners, joins_per_second, timed_cpu_per_join) = join_all(processes, joiners, tag).await;
    crowd.extend(joiners);
    let server_cpu_per_join = (processes.cpu()[1] - cpu_before) * 1e6 / n as f64;
    // Let the last coalesced diffs go out before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let frames_per_join = (frames_sent(ports).await - before) as f64 / n as f64;
    Generation { crowd, joins_per_second, frames_per_join, server_cpu_per_join, timed_cpu_per_join }
}

/// The engine alone, in this process, on the same Redis: joins/s for `n`
/// users, 100 per topic, into empty topics or (`watched`) topics whose 100
/// members joined first, untimed.
async fn engine_joins(url: &str, n: usize, watched: bool) -> f64 {
    let mut options = RedisOptions::new(url);
    options.prefix = format!("engine-only-{n}-{watched}");
    options.timeout = Duration::from_secs(10);
    let hub = Hub::new();
    let presence =
        Presence::new(Arc::new(RedisBackend::connect(options).await.unwrap()), hub.clone(), Options::default())
            .unwrap();
    let join_all = |tag: &'static str| {
        let conns: Vec<_> =
            (0..n).map(|i| hub.connect(json!({"id": format!("{tag}{i}"), "name": "e"}), 1 << 20).0).collect();
        let presence = &presence;
        async move {
            let started = Instant::now();
            futures::stream::iter(conns.iter().enumerate())
                .for_each_concurrent(256, |(i, conn)| async move {
                    presence.join(*conn, &format!("engine-topic-{}", i / 100)).await.unwrap()
                })
                .await;
            n as f64 / started.elapsed().as_secs_f64()
        }
    };
    if watched {
        join_all("m").await;
    }
    join_all("e").await
}

/// Both generations and the engine alone, at two sizes, as a table.
async fn compare(processes: &Processes<'_>, redis: &str, sizes: [usize; 2], watched: bool) {
    let ports = processes.servers.map(|s| s.port);
    let mut rows: Vec<(&str, Vec<String>)> = vec![
        ("join → `join` seen on the other instance (legacy crowd in place), p50 / p99", vec![]),
        ("joins/s, legacy clients (0.3/0.4) through WebSocket + presenced + Redis", vec![]),
        ("joins/s, current clients (0.5), same path", vec![]),
        ("frames sent per join, legacy / current", vec![]),
        ("server CPU per join, connect to state (both presenced), legacy / current", vec![]),
        ("CPU per join, first subscribe to last state (load generator + servers + Redis), legacy", vec![]),
        ("the same, current", vec![]),
        ("joins/s, engine alone on the same Redis", vec![]),
        ("**current ÷ legacy joins/s; current ÷ engine alone**", vec![]),
    ];
    let w = if watched { "w" } else { "" };
    for n in sizes {
        let legacy = generation(processes, n, &format!("l{w}{n}-"), false, watched).await;
        let (p50, p99) = join_latency(ports, 300).await;
        drop(legacy.crowd);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let current = generation(processes, n, &format!("c{w}{n}-"), true, watched).await;
        drop(current.crowd);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let engine_rate = engine_joins(redis, n, watched).await;
        let (legacy_rate, current_rate) = (legacy.joins_per_second, current.joins_per_second);
        rows[0].1.push(format!("{:.2} / {:.2} ms", p50 / 1e3, p99 / 1e3));
        rows[1].1.push(format!("{legacy_rate:.0}"));
        rows[2].1.push(format!("{current_rate:.0}"));
        rows[3].1.push(format!("{:.1} / {:.1}", legacy.frames_per_join, current.frames_per_join));
        rows[4].1.push(format!("{:.0} / {:.0} µs", legacy.server_cpu_per_join, current.server_cpu_per_join));
        for (row, [generator, servers, redis]) in [(5, legacy.timed_cpu_per_join), (6, current.timed_cpu_per_join)] {
            rows[row].1.push(format!("{generator:.0} + {servers:.0} + {redis:.0} µs"));
        }
        rows[7].1.push(format!("{engine_rate:.0}"));
        rows[8].1.push(format!("**{:.2}; {:.2}**", current_rate / legacy_rate, current_rate / engine_rate));
    }
    let joins = |n: usize| format!("{},{:03} joins", n / 1000, n % 1000);
    println!("| measure | {} | {} |", joins(sizes[0]), joins(sizes[1]));
    println!("|---|---|---|");
    for (name, values) in rows {
        println!("| {name} | {} |", values.join(" | "));
    }
}

pub async fn run() {
    println!("\n### Server (two presenced processes, one Redis, WebSocket clients on loopback)\n");
    let redis = RedisServer::start();
    let a = Presenced::start(&redis.url()).await;
    let b = Presenced::start(&redis.url()).await;
    let processes = Processes { servers: [&a, &b], redis: redis.pid() };

    // Memory per idle connection.
    let before = a.rss_kib();
    let idle: Vec<Client> = futures::stream::iter(0..5_000)
        .map(|i| client(a.port, Box::leak(format!("idle{i}").into_boxed_str()), None, None, None, false))
        .buffer_unordered(256)
        .collect()
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_idle = (a.rss_kib().saturating_sub(before)) as f64 * 1024.0 / idle.len() as f64;
    drop(idle);

    println!("Joins into empty topics, 100 clients per topic:\n");
    compare(&processes, &redis.url(), [1_000, 10_000], false).await;
    println!("\nJoins into topics whose 100 members joined first (each join seen by 100 subscribers):\n");
    compare(&processes, &redis.url(), [1_000, 5_000], true).await;
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| memory per idle WebSocket connection (RSS delta / 5,000) | {:.1} KiB |", per_idle / 1024.0);
}
