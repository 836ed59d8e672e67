//! The demo page in a real browser (headless Chromium): visitors in separate
//! browser contexts see each other join and leave, on one instance and across
//! two instances sharing Redis.

use presence::backend::redis::RedisOptions;
use presence::server::ServerConfig;
use presence_tests::browser::Browser;
use presence_tests::guests::workspace;
use presence_tests::ws::Served;
use presence_tests::*;
use serde_json::json;

const COUNT: &str = "document.getElementById('count').textContent";
const MEMBERS: &str = "[...document.querySelectorAll('#members li')].map(li => li.dataset.key).join(',')";

fn config() -> ServerConfig {
    ServerConfig { options: fast_options(), ..ServerConfig::default() }
}

/// Two visitors see each other; when one closes the tab, the other sees the leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_visitors_see_each_other_and_the_leave() {
    let served = Served::start(config()).await;
    let mut browser = Browser::launch().await;
    let ada = browser.open(&format!("http://{}/?name=Ada&room=lobby", served.addr)).await;
    browser.wait_for(&ada, COUNT, json!("1")).await;
    let bob = browser.open(&format!("http://{}/?name=Bob&room=lobby", served.addr)).await;
    browser.wait_for(&ada, COUNT, json!("2")).await;
    browser.wait_for(&bob, MEMBERS, json!("ada,bob")).await;
    let shot = workspace().join("target").join("demo-page.png");
    browser.screenshot(&ada, &shot).await;
    browser.close(bob).await;
    browser.wait_for(&ada, MEMBERS, json!("ada")).await;
    browser.wait_for(&ada, COUNT, json!("1")).await;
}

/// Two `presenced` instances on one Redis: a browser on each sees the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_two_instances_see_each_other() {
    let redis = RedisServer::start();
    let shared = ServerConfig { redis: Some(RedisOptions::new(redis.url())), ..config() };
    let a = Served::start(shared.clone()).await;
    let b = Served::start(shared).await;
    let mut browser = Browser::launch().await;
    let ada = browser.open(&format!("http://{}/?name=Ada&room=shared", a.addr)).await;
    let bob = browser.open(&format!("http://{}/?name=Bob&room=shared", b.addr)).await;
    browser.wait_for(&ada, MEMBERS, json!("ada,bob")).await;
    browser.wait_for(&bob, MEMBERS, json!("ada,bob")).await;
    browser.close(ada).await;
    browser.wait_for(&bob, MEMBERS, json!("bob")).await;
}
