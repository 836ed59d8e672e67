//! Real clients of both generations on real servers, checked against a plain
//! model of who has a tab open: every tab's own view of its topic (replayed
//! from the frames it received, as the client's store would), and every
//! server's `list`, must show exactly the users with a tab open there.

use super::poll;
use super::ws::{Served, WsClient};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Which client generation a tab speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// 0.3 / 0.4: no `hello`, `list`/`join`/`leave`/`updated` events.
    Legacy,
    /// 0.5: `hello`, acks, `presence_state`/`presence_diff`.
    Current,
}

/// One open tab: a user subscribed to one topic on one server.
pub struct Tab {
    pub client: WsClient,
    pub generation: Generation,
    pub user: String,
    pub topic: String,
    pub server: usize,
}

impl Tab {
    /// Open a tab and subscribe. A current tab must be acknowledged
    /// `subscribed` (never denied): a join the backend cannot take now is
    /// kept, not refused.
    pub async fn open(served: &Served, server: usize, generation: Generation, user: &str, topic: &str) -> Tab {
        let mut client = served.connect(&format!("id={user}&name={user}")).await;
        match generation {
            Generation::Current => {
                client.hello(&["batch"]).await;
                let reference = rand::random::<u32>() as u64;
                client.subscribe_ref(topic, reference).await;
                let ack = client.wait_frame("an ack", |f| f["ref"] == reference).await;
                assert_eq!(ack["type"], "subscribed", "{user} on {topic}: {ack}");
            }
            Generation::Legacy => client.subscribe(topic).await,
        }
        Tab { client, generation, user: user.to_owned(), topic: topic.to_owned(), server }
    }

    /// The users this tab shows on its topic (after reading what arrived),
    /// or the first inconsistency in what it received.
    pub async fn view(&mut self) -> Result<BTreeSet<String>, String> {
        self.client.drain_for(Duration::from_millis(5)).await;
        match self.generation {
            Generation::Current => Ok(self.client.presence_view(&self.topic).into_keys().collect()),
            Generation::Legacy => self.client.legacy_view(&self.topic),
        }
    }
}

/// Who should be shown on each topic: the users with a tab open on it.
pub fn model(tabs: &[Tab]) -> BTreeMap<String, BTreeSet<String>> {
    let mut model: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for tab in tabs {
        model.entry(tab.topic.clone()).or_default().insert(tab.user.clone());
    }
    model
}

/// Whether every server lists, and every tab shows, exactly the model;
/// `Err` says what differs. A legacy tab that saw a second `join` for a user
/// it listed is an error that can never heal: it panics.
pub async fn agrees(servers: &[&Served], tabs: &mut [Tab], topics: &[String]) -> Result<(), String> {
    let model = model(tabs);
    for topic in topics {
        let want = model.get(topic).cloned().unwrap_or_default();
        for (i, served) in servers.iter().enumerate() {
            let listed: BTreeSet<String> = match served.server.presence().list(topic).await {
                Ok(members) => members.into_iter().map(|m| m.key).collect(),
                Err(e) => return Err(format!("server {i}: list {topic}: {e}")),
            };
            if listed != want {
                return Err(format!("server {i} lists {listed:?} on {topic}, want {want:?}"));
            }
        }
    }
    for tab in tabs.iter_mut() {
        let want = model.get(&tab.topic).cloned().unwrap_or_default();
        match tab.view().await {
            Ok(shown) if shown == want => {}
            Ok(shown) => {
                return Err(format!(
                    "{:?} tab of {} on server {} shows {shown:?} on {}, want {want:?}",
                    tab.generation, tab.user, tab.server, tab.topic
                ))
            }
            Err(e) => panic!("{:?} tab of {} on {}: {e}", tab.generation, tab.user, tab.topic),
        }
    }
    Ok(())
}

/// Wait until [`agrees`] holds, within `within`; how long it took.
pub async fn converge(servers: &[&Served], tabs: &mut [Tab], topics: &[String], within: Duration) -> Duration {
    let started = std::time::Instant::now();
    poll::until("every server and tab shows the model", within, async || agrees(servers, tabs, topics).await).await;
    started.elapsed()
}

impl WsClient {
    /// Replay the legacy presence events of `topic` received so far, as a
    /// 0.3/0.4 store would: `list` replaces, `join` adds, `leave` removes.
    /// Returns the keys shown, or the first inconsistency (a `join` for a
    /// key already shown, a `leave` for one not shown).
    pub fn legacy_view(&self, topic: &str) -> Result<BTreeSet<String>, String> {
        let presence = format!("__presence:{topic}");
        let mut shown = BTreeSet::new();
        for event in self.seen.iter().filter(|e| e["topic"] == presence.as_str()) {
            let key = || event["data"]["key"].as_str().unwrap_or_default().to_owned();
            match event["event"].as_str().unwrap_or_default() {
                "list" => {
                    shown = event["data"]
                        .as_array()
                        .map(|m| m.iter().filter_map(|m| m["key"].as_str().map(str::to_owned)).collect())
                        .unwrap_or_default()
                }
                "join" if !shown.insert(key()) => return Err(format!("second `join` for listed {:?}", key())),
                "leave" if !shown.remove(&key()) => return Err(format!("`leave` for unlisted {:?}", key())),
                _ => {}
            }
        }
        Ok(shown)
    }

    /// Frames received so far whose `event` is `event`, batches opened.
    pub fn events_named(&self, event: &str) -> Vec<Value> {
        self.seen
            .iter()
            .flat_map(|f| match f["type"].as_str() {
                Some("batch") => f["events"].as_array().cloned().unwrap_or_default(),
                _ => vec![f.clone()],
            })
            .filter(|e| e["event"] == event)
            .collect()
    }
}
