//! Redis as managed services run it: TLS only (`rediss://`, a private CA) and
//! an ACL user with a password, against a real `redis-server` whose
//! certificates the test makes. Presence works through it across instances;
//! a wrong password, an untrusted certificate or a plain connection to the
//! TLS port are refused clearly, without the password in the message.

use presence::backend::redis::{RedisBackend, RedisOptions};
use presence_tests::redis_server::Spec;
use presence_tests::tls::Certificates;
use presence_tests::*;
use serde_json::json;
use std::sync::Arc;

/// A generous timeout: these tests are about who may connect, not how fast,
/// and the full suite can keep both cores busy for seconds (a connect here
/// once failed under that load, with the default 2 s).
fn options(url: String, ca: Option<Vec<u8>>) -> RedisOptions {
    RedisOptions { tls_ca: ca, timeout: std::time::Duration::from_secs(10), ..RedisOptions::new(url) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_an_acl_user_work_and_refuse_clearly() {
    let certs = tokio::task::spawn_blocking(Certificates::make).await.unwrap();
    let port = redis_server::free_port();
    let args = certs.server_args(port, "ada", "s3cret-pass");
    let _server = RedisServer::start_with(port, Spec { args, tcp_probe: true, ..Spec::default() });
    let url = format!("rediss://ada:s3cret-pass@localhost:{port}/");

    let mut instances = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(options(url.clone(), Some(certs.ca_pem()))).await.expect("TLS + ACL");
        instances.push(Instance::on(Arc::new(backend), fast_options()));
    }
    let (a, b) = (&instances[0], &instances[1]);
    let mut watcher = b.watcher("room").await;
    let ada = a.connect(json!({"id": "ada"}));
    a.presence.join(ada.id, "room").await.unwrap();
    watcher.wait_for("join", |d| d["key"] == "ada").await;
    assert_eq!(keys(b, "room").await, ["ada"]);

    let refusals = [
        ("a wrong password", options(url.replace("s3cret-pass", "wrong-pass"), Some(certs.ca_pem()))),
        ("an untrusted certificate", options(url.clone(), None)),
        ("plain TCP to the TLS port", options(format!("redis://ada:s3cret-pass@localhost:{port}/"), None)),
    ];
    for (what, options) in refusals {
        let started = std::time::Instant::now();
        let err = RedisBackend::connect(options).await.err().unwrap_or_else(|| panic!("{what} was accepted"));
        let message = err.to_string();
        assert!(!message.contains("s3cret") && !message.contains("wrong-pass"), "{what}: {message}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{what}: took {:?}", started.elapsed());
        println!("{what}: {message}");
        if what == "a wrong password" {
            assert!(message.contains("refused") && message.contains("password"), "{message}");
        }
    }
}

/// A cluster that speaks only TLS, with an ACL user: the seed list of
/// `rediss://` URLs and the CA are all the backend needs; two instances see
/// each other's joins through sharded pub/sub over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_with_an_acl_user_works() {
    let (certs, cluster) = tokio::task::spawn_blocking(|| {
        let certs = Certificates::make();
        let cluster = RedisCluster::start_tls(&certs, "ada", "s3cret-pass");
        (certs, cluster)
    })
    .await
    .unwrap();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::connect(options(cluster.urls(), Some(certs.ca_pem()))).await.expect("TLS cluster");
        assert_eq!(backend.topology(), presence::backend::redis::Topology::Cluster);
        instances.push(Instance::on(Arc::new(backend), fast_options()));
    }
    let (a, b) = (&instances[0], &instances[1]);
    let topics: Vec<String> = (0..6).map(|n| format!("room-{n}")).collect();
    let mut watchers = Vec::new();
    for topic in &topics {
        watchers.push(b.watcher(topic).await);
    }
    let ada = a.connect(json!({"id": "ada"}));
    for (topic, watcher) in topics.iter().zip(&mut watchers) {
        a.presence.join(ada.id, topic).await.unwrap();
        watcher.wait_for("join", |d| d["key"] == "ada").await;
        assert_eq!(keys(b, topic).await, ["ada"]);
    }
    a.presence.clear().await.unwrap();
    for topic in &topics {
        assert_eq!(b.presence.count(topic).await.unwrap(), 0);
    }
}

/// An ACL user that may not run `INFO` (the topology probe): one URL is
/// then taken as one Redis, and presence works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_info_still_connects() {
    let port = redis_server::free_port();
    let args = ["--user", "ada", "on", ">s3cret-pass", "~*", "&*", "+@all", "-info", "--user", "default", "off"];
    let _server = RedisServer::start_with(
        port,
        Spec { args: args.map(str::to_owned).to_vec(), tcp_probe: true, ..Spec::default() },
    );
    let url = format!("redis://ada:s3cret-pass@127.0.0.1:{port}/");
    let backend = RedisBackend::connect(options(url, None)).await.expect("connects without INFO");
    assert_eq!(backend.topology(), presence::backend::redis::Topology::Single);
    let instance = Instance::on(Arc::new(backend), fast_options());
    let ada = instance.connect(json!({"id": "ada"}));
    instance.presence.join(ada.id, "room").await.unwrap();
    assert_eq!(keys(&instance, "room").await, ["ada"]);
}
