//! `bench cluster`: the engine on one Redis and on a three-master Redis
//! Cluster (three replicas) started in the same run — joins/s and a heartbeat
//! tick on each — and the time from a master's SIGKILL to every user listed
//! by every instance again.

use futures::StreamExt;
use presence::Options;
use presence_tests::{manual_ticks, RedisCluster, RedisServer};
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn run(users: usize, topics: usize, concurrency: usize) {
    println!("\n### Redis Cluster (3 masters + 3 replicas) vs one Redis, one run\n");
    let single = RedisServer::start();
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    println!("| measure | one Redis | cluster | cluster ÷ one |");
    println!("|---|---|---|---|");
    let one = throughput(&single.url(), users, topics, concurrency).await;
    let many = throughput(&cluster.urls(), users, topics, concurrency).await;
    println!(
        "| joins/s ({users} users, {topics} topics, {concurrency} in flight) | {:.0} | {:.0} | {:.2} |",
        one.0,
        many.0,
        many.0 / one.0
    );
    println!(
        "| heartbeat tick, {users} users in {topics} topics (median of 5) | {:.1} ms | {:.1} ms | {:.2} |",
        one.1.as_secs_f64() * 1e3,
        many.1.as_secs_f64() * 1e3,
        many.1.as_secs_f64() / one.1.as_secs_f64()
    );
    drop(single);
    failover(cluster).await;
}

/// Joins/s with every topic observed first, then a tick's wall time.
async fn throughput(url: &str, users: usize, topics: usize, concurrency: usize) -> (f64, Duration) {
    let (presence, hub) = super::start_engine(url, manual_ticks()).await;
    let topic_of = |i: usize| format!("topic-{}", i % topics);
    let observers: Vec<_> = (0..topics).map(|_| hub.connect(json!({"id": "observer"}), 64 << 20)).collect();
    for (t, (observer, _)) in observers.iter().enumerate() {
        presence.sync(*observer, &topic_of(t)).await.unwrap();
    }
    let conns: Vec<_> = (0..users).map(|i| hub.connect(json!({"id": format!("user-{i}")}), 1 << 20)).collect();
    let started = Instant::now();
    futures::stream::iter(conns.iter().enumerate())
        .for_each_concurrent(concurrency, |(i, (id, _))| {
            let (presence, topic) = (&presence, topic_of(i));
            async move { presence.join(*id, &topic).await.expect("join") }
        })
        .await;
    let rate = users as f64 / started.elapsed().as_secs_f64();
    presence.tick().await;
    let mut ticks = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        presence.tick().await;
        ticks.push(started.elapsed());
    }
    ticks.sort();
    presence.destroy();
    (rate, ticks[2])
}

/// Two instances hold 2,000 users in 100 topics; one master is killed.
async fn failover(mut cluster: RedisCluster) {
    let options = Options { heartbeat: Duration::from_millis(200), ttl: Duration::from_secs(4), ..Options::default() };
    let url = cluster.urls();
    let instances = [super::start_engine(&url, options.clone()).await, super::start_engine(&url, options).await];
    let topics: Vec<String> = (0..100).map(|t| format!("fo-{t}")).collect();
    let mut conns = Vec::new();
    for i in 0..2000 {
        let (presence, hub) = &instances[i % 2];
        let conn = hub.connect(json!({"id": format!("u{i}")}), 1 << 20);
        presence.join(conn.0, &topics[i % topics.len()]).await.expect("join");
        conns.push(conn);
    }
    let victim = cluster.master_of(&presence::backend::redis::TopicKeys::new("presence", &topics[0]).users);
    let killed = Instant::now();
    cluster.kill(victim);
    let (cluster, promoted) = tokio::task::spawn_blocking(move || {
        cluster.wait_settled();
        let promoted = killed.elapsed();
        (cluster, promoted)
    })
    .await
    .unwrap();
    loop {
        let mut complete = true;
        'check: for (presence, _) in &instances {
            for topic in &topics {
                if presence.list(topic).await.map(|m| m.len()).ok() != Some(20) {
                    complete = false;
                    break 'check;
                }
            }
        }
        if complete {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "presence not complete a minute after the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let complete = killed.elapsed();
    println!();
    println!("| failover (2,000 users in 100 topics, 2 instances, heartbeat 200 ms, ttl 4 s) | time |");
    println!("|---|---|");
    println!(
        "| SIGKILL of a master → its replica promoted, cluster ok (`cluster-node-timeout 1000`) | {promoted:.2?} |"
    );
    println!("| SIGKILL → every user listed by both instances again | {complete:.2?} |");
    drop(cluster);
}
