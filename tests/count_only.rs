//! Count-only topics under racing instances, checked against a plain model:
//! seeded rounds of random joins and leaves on two instances sharing one
//! real `redis-server`, with an observer on each. After every round, each
//! observer must show what a client store would: the members while the topic
//! lists at most `above - above/10` users, the count once it lists more than
//! `above`, and either one (consistent with itself) in the margin between.
//! A failure names its seed.

use presence::Options;
use presence_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const ABOVE: usize = 8;
const USERS: usize = 24;
const ROUNDS: usize = 40;
const TOPIC: &str = "hall:main";

/// What an observer shows, replaying its envelopes as a client would.
#[derive(Debug, PartialEq)]
enum Shown {
    Members(BTreeSet<String>),
    Count(u64),
}

fn shown(observer: &mut Client) -> Result<Shown, String> {
    let members = observer.view(TOPIC)?;
    let presence = format!("__presence:{TOPIC}");
    let last = observer
        .seen
        .iter()
        .rev()
        .find(|e| e["topic"] == presence.as_str() && (e["event"] == "list" || e["event"] == "count"));
    Ok(match last {
        Some(e) if e["event"] == "count" && members.is_empty() => Shown::Count(e["data"].as_u64().unwrap_or(0)),
        Some(e) if e["event"] == "count" => return Err(format!("a count while {members:?} are still listed")),
        _ => Shown::Members(members),
    })
}

/// What the model allows for these members.
fn allowed(members: &BTreeSet<String>, seen: &Shown) -> bool {
    let n = members.len();
    let as_members = matches!(seen, Shown::Members(m) if m == members);
    let as_count = *seen == Shown::Count(n as u64);
    if n > ABOVE {
        as_count
    } else if n <= ABOVE - ABOVE / 10 {
        as_members
    } else {
        as_members || as_count
    }
}

async fn run(seed: u64) -> Result<(), String> {
    let server = RedisServer::start();
    let store = Store::redis(&server);
    let options = Options {
        count_only: [("hall:".to_owned(), ABOVE as u64)].into(),
        count_window: Duration::from_millis(10),
        ..fast_options()
    };
    let instances = [Instance::start(&store, options.clone()).await, Instance::start(&store, options).await];
    let mut observers = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        let observer = instance.connect(json!({"id": format!("observer-{i}")}));
        instance.presence.sync(observer.id, TOPIC).await.map_err(|e| e.to_string())?;
        observers.push(observer);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    // user -> (instance, client) for every open connection; a user may have tabs on both.
    let mut tabs: BTreeMap<usize, Vec<(usize, Client)>> = BTreeMap::new();
    for round in 0..ROUNDS {
        // A burst that may cross the threshold either way, all in flight at once.
        // Drift towards the threshold, so rounds cross it both ways.
        let listed = tabs.values().filter(|t| !t.is_empty()).count();
        let grow = rng.random_bool(if listed > ABOVE { 0.3 } else { 0.7 });
        // Tabs opened in this burst are not closed in it.
        let mut opened = Vec::new();
        for _ in 0..rng.random_range(1..=6) {
            let present: Vec<usize> = tabs.iter().filter(|(_, t)| !t.is_empty()).map(|(user, _)| *user).collect();
            if grow || present.is_empty() {
                let (user, on) = (rng.random_range(0..USERS), rng.random_range(0..2));
                opened.push((user, on, instances[on].connect(json!({"id": format!("u{user}")}))));
            } else {
                let user_tabs = tabs.get_mut(&present[rng.random_range(0..present.len())]).unwrap();
                let (on, client) = user_tabs.swap_remove(rng.random_range(0..user_tabs.len()));
                instances[on].close(&client).await;
            }
        }
        let joins = opened.iter().map(|(_, on, client)| instances[*on].presence.join(client.id, TOPIC));
        for result in futures::future::join_all(joins).await {
            result.map_err(|e| format!("round {round}: join failed: {e}"))?;
        }
        for (user, on, client) in opened {
            tabs.entry(user).or_default().push((on, client));
        }
        let members: BTreeSet<String> =
            tabs.iter().filter(|(_, t)| !t.is_empty()).map(|(user, _)| format!("u{user}")).collect();
        for (i, observer) in observers.iter_mut().enumerate() {
            let what = format!("round {round}: observer {i} shows {} users as the model allows", members.len());
            poll::try_until(&what, DEADLINE, async || {
                let seen = shown(observer)?;
                if allowed(&members, &seen) {
                    Ok(())
                } else {
                    Err(format!("{seen:?} for {members:?}"))
                }
            })
            .await?;
        }
    }
    Ok(())
}

async fn seed(seed: u64) {
    if let Err(e) = run(seed).await {
        panic!("count-only model check failed with seed {seed}: {e}");
    }
}

presence_tests::seeded_tests!(seed: seed_1 = 1, seed_2 = 2, seed_3 = 3);
