//! Benchmarks, each printing a Markdown table. Every part starts its own
//! redis-server; ratios compare numbers measured in the same run.
//!
//! Run with: `cargo build --release -p presence --bin presenced -p presence-tests --bin bench`
//! then `target/release/bench [engine|plugin|server|cluster|storm]` (default: all five).
//! `bench engine --users N --topics T --concurrency C` measures one size.
//!
//! engine:
//! - joins/s and leaves/s through the engine, many connections in flight;
//! - the same Redis running `redis-benchmark` on the join script (EVALSHA)
//!   in the same run, and our ratio to it;
//! - round trips and Redis commands per join and per leave (`INFO commandstats`);
//! - one heartbeat tick for 10,000 users across 1,000 topics;
//! - joins/s into rooms of 20, 200, 2,000 and 10,000 members, each row with
//!   the EVALSHA ceiling measured right after it.
//!
//! plugin: p50/p99 per export with instance reuse, a fresh instance, reload
//! cold and from the cache, and a join's cost with and without a plugin.
//!
//! server: two `presenced` processes on one Redis and WebSocket clients over
//! loopback — memory per idle connection; for legacy and current clients side
//! by side, joins into empty topics and into topics with 100 members already:
//! joins/s through the stack against the engine alone, frames per join, CPU
//! per join split between load generator, servers and Redis, and join →
//! `join` latency seen on the other instance.
//!
//! cluster: joins/s and a tick on one Redis and on a three-master cluster in
//! the same run, and the time from a master's SIGKILL to full presence.
//!
//! storm: 20,000 clients of a SIGKILLed instance reconnect to the other at
//! once: time to full presence, joins/s against the EVALSHA ceiling, peaks.

use futures::StreamExt;
use presence::backend::redis::{RedisBackend, RedisOptions};
use presence::{Hub, Options, Presence};
use presence_tests::{command_stats, manual_ticks, RedisServer};
use serde_json::json;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod cluster_bench;
mod plugin_bench;
mod server_bench;
mod storm_bench;

struct Args {
    users: usize,
    concurrency: usize,
    topics: usize,
}

impl Args {
    /// `--users N --topics T --concurrency C`; `None` when none is given.
    fn parse(flags: &[String]) -> Option<Self> {
        let mut args = Args { users: 20_000, concurrency: 256, topics: 1000 };
        if flags.is_empty() {
            return None;
        }
        for pair in flags.chunks(2) {
            let value = pair.get(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| usage());
            match pair[0].as_str() {
                "--users" => args.users = value,
                "--topics" => args.topics = value,
                "--concurrency" => args.concurrency = value,
                _ => usage(),
            }
        }
        Some(args)
    }
}

fn usage() -> ! {
    eprintln!("usage: bench [engine [--users N --topics T --concurrency C]|plugin|server|cluster|storm|all]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let part = argv.first().cloned().unwrap_or_else(|| "all".into());
    let args = Args { users: 20_000, concurrency: 256, topics: 1000 };
    match part.as_str() {
        "engine" => match Args::parse(&argv[1..]) {
            Some(one_size) => engine(&one_size).await,
            None => {
                engine(&args).await;
                room_sizes(&args).await;
            }
        },
        "plugin" => plugin_bench::run().await,
        "server" => server_bench::run().await,
        "cluster" => cluster_bench::run(args.users, args.topics, args.concurrency).await,
        "storm" => storm_bench::run().await,
        "all" => {
            engine(&args).await;
            room_sizes(&args).await;
            plugin_bench::run().await;
            server_bench::run().await;
            cluster_bench::run(args.users, args.topics, args.concurrency).await;
            storm_bench::run().await;
        }
        _ => usage(),
    }
}

/// p50 and p99 of a sample, in microseconds.
pub fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

/// Run `op` for every connection, `concurrency` at a time, with Redis's
/// command statistics reset first: (operations/s, EVALSHA calls, all commands).
async fn measured_phase<F, Fut>(
    con: &mut redis::Connection,
    ids: &[presence::ConnId],
    concurrency: usize,
    op: F,
) -> (f64, u64, u64)
where
    F: Fn(usize, presence::ConnId) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    command_stats::reset(con);
    let started = Instant::now();
    futures::stream::iter(ids.iter().enumerate()).for_each_concurrent(concurrency, |(i, id)| op(i, *id)).await;
    let rate = ids.len() as f64 / started.elapsed().as_secs_f64();
    let stats = command_stats::read(con);
    (rate, stats.evalsha, stats.total)
}

fn redis_version() -> String {
    let output = Command::new("redis-server").arg("--version").output().expect("redis-server");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.split_whitespace().find_map(|w| w.strip_prefix("v=")).unwrap_or("?").to_owned()
}

async fn start_engine(url: &str, options: Options) -> (Presence, Arc<Hub>) {
    let mut redis_options = RedisOptions::new(url);
    redis_options.timeout = Duration::from_secs(10);
    let backend = RedisBackend::connect(redis_options).await.expect("connect");
    let hub = Hub::new();
    (Presence::new(Arc::new(backend), hub.clone(), options).unwrap(), hub)
}

/// `redis-benchmark` calling the join script directly: the ceiling for one
/// round trip per join on this Redis.
fn redis_benchmark_join(port: u16, requests: usize) -> f64 {
    let sha = RedisBackend::script_hashes(presence::backend::redis::Topology::Single)[0].1;
    let topic = "rb";
    let keys = presence::backend::redis::TopicKeys::new("bench", topic);
    let output = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-n", &requests.to_string(), "-c", "64", "-r", "100000000", "-q"])
        .args(["EVALSHA", sha, "6", &keys.users, &keys.refs, &keys.inst, &keys.holds])
        // ARGV as join.lua takes them: instance, user, data, ttl, backstop,
        // known epoch, channel, and no member cap (0: the full join path).
        .args([&keys.seq, &keys.epoch, "0123456789abcdef", "user:__rand_int__", r#"{"id":"x"}"#])
        .args(["900000", "9000000", "", &keys.channel, "0"])
        .output()
        .expect("redis-benchmark is installed with redis-server");
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(3)
        .filter(|w| w[1] == "requests" && w[2] == "per")
        .filter_map(|w| w[0].parse::<f64>().ok())
        .next_back();
    rate.unwrap_or_else(|| panic!("cannot read redis-benchmark output: {text}"))
}

async fn engine(args: &Args) {
    println!("\n### Engine (Redis {})\n", redis_version());
    let server = RedisServer::start();
    let mut con = server.connection();
    let options = manual_ticks();
    let (presence, hub) = start_engine(&server.url(), options.clone()).await;
    let conns: Vec<_> =
        (0..args.users).map(|i| hub.connect(json!({"id": format!("user-{i}"), "name": "bench"}), 1 << 20)).collect();
    let ids: Vec<_> = conns.iter().map(|(id, _)| *id).collect();
    let topic_of = |i: usize| format!("topic-{}", i % args.topics);
    // An observer on every topic first, so the measured joins are
    // steady-state joins (the topic is watched and its replica seeded).
    let observers: Vec<_> = (0..args.topics).map(|_| hub.connect(json!({"id": "observer"}), 64 << 20)).collect();
    for (t, (observer, _)) in observers.iter().enumerate() {
        presence.sync(*observer, &topic_of(t)).await.unwrap();
    }

    let (joins_per_s, join_evalsha, join_commands) = measured_phase(&mut con, &ids, args.concurrency, |i, id| {
        let (presence, topic) = (&presence, topic_of(i));
        async move { presence.join(id, &topic).await.expect("join") }
    })
    .await;
    let (leaves_per_s, leave_evalsha, leave_commands) = measured_phase(&mut con, &ids, args.concurrency, |i, id| {
        let (presence, topic) = (&presence, topic_of(i));
        async move { presence.leave(id, &topic).await.expect("leave") }
    })
    .await;
    drop(conns);

    let baseline = redis_benchmark_join(server.port(), 200_000);

    // Heartbeat: 10,000 users across 1,000 topics on one instance, with
    // `ttl` three heartbeats (the defaults' ratio), so each topic's verify
    // and backstop renewal come as often as in production: ticks share them.
    let tick_options = Options { ttl: options.heartbeat * 3, ..options };
    let (ticker, tick_hub) = start_engine(&server.url(), tick_options).await;
    let tick_conns: Vec<_> = (0..10_000).map(|i| tick_hub.connect(json!({"id": format!("t{i}")}), 1 << 20)).collect();
    futures::stream::iter(tick_conns.iter().enumerate())
        .for_each_concurrent(args.concurrency, |(i, (id, _))| {
            let ticker = &ticker;
            async move { ticker.join(*id, &format!("hb-{}", i % 1000)).await.expect("join") }
        })
        .await;
    ticker.tick().await; // warm (and verifies the topics the joins created)
    const TICKS: usize = 16;
    let mut ticks = Vec::new();
    command_stats::reset(&mut con);
    for _ in 0..TICKS {
        let started = Instant::now();
        ticker.tick().await;
        ticks.push(started.elapsed());
    }
    let tick_stats = command_stats::read(&mut con);
    ticks.sort();

    let per = |n: u64| n as f64 / args.users as f64;
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| joins/s ({} users, {} topics, {} in flight) | {:.0} |",
        args.users, args.topics, args.concurrency, joins_per_s
    );
    println!("| leaves/s | {:.0} |", leaves_per_s);
    println!("| redis-benchmark EVALSHA join.lua, 64 clients (ops/s) | {:.0} |", baseline);
    println!("| joins/s ÷ redis-benchmark EVALSHA | {:.2} |", joins_per_s / baseline);
    println!("| round trips per join / per leave | {:.2} / {:.2} |", per(join_evalsha), per(leave_evalsha));
    println!(
        "| Redis commands per join / per leave (incl. inside scripts) | {:.1} / {:.1} |",
        per(join_commands),
        per(leave_commands)
    );
    let per_tick = |n: u64| n as f64 / TICKS as f64;
    println!(
        "| heartbeat tick, 10,000 users in 1,000 topics (median of {TICKS}) | {:.1} ms |",
        ticks[TICKS / 2].as_secs_f64() * 1e3
    );
    println!("| script calls per tick | {:.0} |", per_tick(tick_stats.evalsha));
    println!(
        "| Redis commands per topic per tick (incl. inside scripts) | {:.2} |",
        per_tick(tick_stats.total) / 1000.0
    );
    println!(
        "| Redis time per tick (`INFO commandstats` usec of EVALSHA) | {:.2} ms |",
        per_tick(tick_stats.evalsha_usec) / 1e3
    );
}

/// Joins/s into rooms of each size (`args.users` joins spread over
/// `users / size` topics, each already observed), with the EVALSHA ceiling
/// measured right after each row on the same Redis.
async fn room_sizes(args: &Args) {
    println!("\n### Engine: joins/s by room size ({} users, {} in flight)\n", args.users, args.concurrency);
    println!("| members per topic | joins/s | EVALSHA ceiling | ÷ ceiling |");
    println!("|---|---|---|---|");
    let server = RedisServer::start();
    for size in [20, 200, 2_000, 10_000] {
        let options = Options { max_members_per_topic: 0, ..manual_ticks() };
        let (presence, hub) = start_engine(&server.url(), options).await;
        let topics = (args.users / size).max(1);
        let topic_of = |i: usize| format!("room-{size}-{}", i % topics);
        let observers: Vec<_> = (0..topics).map(|_| hub.connect(json!({"id": "observer"}), 256 << 20)).collect();
        for (t, (observer, _)) in observers.iter().enumerate() {
            presence.sync(*observer, &topic_of(t)).await.unwrap();
        }
        // Joiners do not read: each list is built and offered, then dropped
        // (holding 20,000 lists of up to 10,000 members would measure memory).
        let ids: Vec<_> = (0..args.users)
            .map(|i| hub.connect(json!({"id": format!("user-{size}-{i}"), "name": "bench"}), 1 << 20).0)
            .collect();
        let started = Instant::now();
        futures::stream::iter(ids.iter().enumerate())
            .for_each_concurrent(args.concurrency, |(i, id)| {
                let (presence, topic) = (&presence, topic_of(i));
                async move { presence.join(*id, &topic).await.expect("join") }
            })
            .await;
        let rate = args.users as f64 / started.elapsed().as_secs_f64();
        presence.destroy();
        drop(observers);
        let ceiling = redis_benchmark_join(server.port(), 100_000);
        println!("| {size} | {rate:.0} | {ceiling:.0} | {:.2} |", rate / ceiling);
    }
}
