//! An instance's local copy of one topic's members, kept by events that may
//! arrive out of order (a script's reply can overtake another instance's
//! earlier event on the subscriber connection).
//!
//! Every change carries the topic's sequence number; the replica remembers,
//! per key, the newest one it applied (keeping a short-lived tombstone for
//! keys that left), and a snapshot taken at sequence `S` covers everything up
//! to `S`. A change is applied only if it is newer than both, and shown to
//! clients only if it changes what they see: a `join` for a user already shown
//! with the same data (a re-assert after the store lost data) shows nothing,
//! one with other data shows `updated`, a `leave` of a user not shown shows
//! nothing. So each client's stream stays consistent: `join` only for users it
//! does not list, `leave` only for users it does.
//!
//! The members every joiner receives are kept serialized, in both encodings
//! clients read (the legacy `list` array and the current `presence_state`
//! map), each built only once something asks for it: a join appends its
//! member to them, any other change drops them, and the next joiner rebuilds
//! them once. A burst of joins into a big room then costs each joiner a copy
//! of the bytes it receives, not a walk over every member.

use super::envelope::member_json;
use crate::backend::{ChangeKind, Snapshot};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Replica {
    entries: HashMap<String, Entry>,
    /// Sequence number of the newest snapshot installed.
    floor: u64,
    /// The newest sequence number applied or installed.
    high: u64,
    /// Members present (entries that are not tombstones).
    present: usize,
    /// The members as a JSON array (`[{"key":…,"data":…},…]`), while it is
    /// known to be current.
    list: OnceCell<String>,
    /// The members as a JSON map (`{key: data,…}`), while it is known to be current.
    map: OnceCell<String>,
    /// Which version of the members this is (see [`Replica::version`]).
    version: u64,
}

/// Versions of members, over every replica of the process: a topic
/// forgotten and made again never reuses one.
static VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_version() -> u64 {
    VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Entry {
    seq: u64,
    /// `None`: the key left (a tombstone, pruned after a while).
    data: Option<String>,
    /// `{"key":…,"data":…}`, built once per change so a `list` is a concatenation.
    member: String,
    since: Instant,
}

impl Entry {
    fn new(seq: u64, key: &str, data: Option<String>) -> Self {
        let member = data.as_deref().map(|d| member_json(key, d)).unwrap_or_default();
        Self { seq, data, member, since: Instant::now() }
    }
}

/// A change local subscribers must be told about.
pub(crate) type Shown = (ChangeKind, String, String);

impl Replica {
    /// Apply one change; returns what clients must be shown, if anything
    /// (for a `leave`, with the data they were shown).
    pub fn apply(&mut self, seq: u64, kind: ChangeKind, key: &str, data: &str) -> Option<(ChangeKind, String)> {
        if seq <= self.floor || self.entries.get(key).is_some_and(|e| e.seq >= seq) {
            return None;
        }
        self.high = self.high.max(seq);
        let new = (kind != ChangeKind::Leave).then(|| data.to_owned());
        let old = self.entries.insert(key.to_owned(), Entry::new(seq, key, new)).and_then(|e| e.data);
        let shown = self.shown(kind, old, data);
        match &shown {
            Some((ChangeKind::Join, _)) => self.append_encoded(key),
            Some(_) => self.drop_encoded(),
            None => {}
        }
        shown
    }

    /// What clients see of a change, given the data they were shown before.
    fn shown(&mut self, kind: ChangeKind, old: Option<String>, data: &str) -> Option<(ChangeKind, String)> {
        match (kind, old) {
            (ChangeKind::Leave, Some(old)) => {
                self.present -= 1;
                Some((ChangeKind::Leave, old))
            }
            (ChangeKind::Leave, None) => None,
            (_, None) => {
                self.present += 1;
                Some((ChangeKind::Join, data.to_owned()))
            }
            (_, Some(old)) if old == data => None,
            (_, Some(_)) => Some((ChangeKind::Updated, data.to_owned())),
        }
    }

    /// The members' version: changed by every change that clients see.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A member joined: add it to the encodings that are built.
    fn append_encoded(&mut self, key: &str) {
        self.version = next_version();
        let Some(entry) = self.entries.get(key) else { return };
        if let Some(list) = self.list.get_mut() {
            append(list, &entry.member);
        }
        if let (Some(map), Some(data)) = (self.map.get_mut(), entry.data.as_deref()) {
            append(map, &map_entry(key, data));
        }
    }

    fn drop_encoded(&mut self) {
        self.version = next_version();
        self.list.take();
        self.map.take();
    }

    /// The newest sequence number this replica reflects.
    pub fn high(&self) -> u64 {
        self.high
    }

    /// How many members it shows.
    pub fn len(&self) -> usize {
        self.present
    }

    /// Merge a snapshot; returns what changed, for local subscribers.
    pub fn install(&mut self, snapshot: &Snapshot) -> Vec<Shown> {
        let floor = snapshot.seq;
        let mut shown = Vec::new();
        let mut present = std::collections::HashSet::with_capacity(snapshot.users.len());
        for (key, data) in &snapshot.users {
            present.insert(key.as_str());
            match self.entries.get_mut(key) {
                Some(entry) if entry.seq > floor => {}
                Some(entry) => {
                    match &entry.data {
                        Some(old) if old == data => {}
                        Some(_) => shown.push((ChangeKind::Updated, key.clone(), data.clone())),
                        None => shown.push((ChangeKind::Join, key.clone(), data.clone())),
                    }
                    *entry = Entry::new(floor, key, Some(data.clone()));
                }
                None => {
                    shown.push((ChangeKind::Join, key.clone(), data.clone()));
                    self.entries.insert(key.clone(), Entry::new(floor, key, Some(data.clone())));
                }
            }
        }
        self.entries.retain(|key, entry| {
            if entry.seq > floor || present.contains(key.as_str()) {
                return true;
            }
            if let Some(data) = entry.data.take() {
                shown.push((ChangeKind::Leave, key.clone(), data));
            }
            false
        });
        self.floor = self.floor.max(floor);
        self.high = self.high.max(floor);
        self.present = self.entries.values().filter(|e| e.data.is_some()).count();
        self.drop_encoded();
        shown
    }

    /// Current members: (key, public data JSON).
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().filter_map(|(k, e)| e.data.as_deref().map(|d| (k.as_str(), d)))
    }

    /// The members as a JSON array (`[{"key":…,"data":…},…]`, a legacy
    /// `list`), without copying it: built once per change other than a join
    /// (a join appends to it).
    pub fn list_json(&self) -> &str {
        self.list.get_or_init(|| {
            let mut json = String::from("[]");
            for entry in self.entries.values().filter(|e| e.data.is_some()) {
                append(&mut json, &entry.member);
            }
            json
        })
    }

    /// The members as a JSON map (`{key: data,…}`, a current
    /// `presence_state`), kept the same way as [`Replica::list_json`].
    pub fn map_json(&self) -> &str {
        self.map.get_or_init(|| {
            let mut json = String::from("{}");
            for (key, data) in self.members() {
                append(&mut json, &map_entry(key, data));
            }
            json
        })
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// Forget tombstones older than `age`: by then no delayed event is in flight.
    pub fn prune(&mut self, age: Duration) {
        let now = Instant::now();
        self.entries.retain(|_, e| e.data.is_some() || now.duration_since(e.since) < age);
    }
}

/// Add `item` to a JSON array or map (`[…]`, `{…}`) in place.
fn append(json: &mut String, item: &str) {
    let close = json.pop().expect("an encoding ends with its bracket");
    if json.len() > 1 {
        json.push(',');
    }
    json.push_str(item);
    json.push(close);
}

/// `"key":data`, one entry of the map encoding.
fn map_entry(key: &str, data: &str) -> String {
    format!("{}:{data}", serde_json::to_string(key).expect("strings serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChangeKind::*;

    fn snapshot(seq: u64, users: &[(&str, &str)]) -> Snapshot {
        Snapshot { seq, epoch: None, users: users.iter().map(|(k, d)| (k.to_string(), d.to_string())).collect() }
    }

    /// An older leave that arrives after a newer join of the same user is ignored.
    #[test]
    fn late_old_events_are_ignored() {
        let mut r = Replica::default();
        assert_eq!(r.apply(5, Join, "a", "1"), Some((Join, "1".into())));
        assert_eq!(r.apply(4, Leave, "a", "1"), None);
        assert_eq!(r.members().collect::<Vec<_>>(), vec![("a", "1")]);
        assert_eq!(r.apply(6, Leave, "a", "null"), Some((Leave, "1".into())), "the leave shows the data shown");
        assert_eq!(r.apply(5, Join, "a", "1"), None);
        assert!(r.is_empty());
    }

    /// A re-assert (new sequence number, same user) after the store lost its
    /// data shows nothing for a user already listed, `updated` for new data;
    /// a leave of a user not listed shows nothing. Clients never see a second
    /// `join` for a user they list, nor a `leave` for one they do not.
    #[test]
    fn only_changes_clients_can_see_are_shown() {
        let mut r = Replica::default();
        assert_eq!(r.apply(1, Join, "a", "1"), Some((Join, "1".into())));
        assert_eq!(r.apply(9, Join, "a", "1"), None);
        assert_eq!(r.apply(10, Join, "a", "2"), Some((Updated, "2".into())));
        assert_eq!(r.apply(11, Leave, "ghost", "null"), None);
        assert_eq!((r.len(), r.high()), (1, 11));
    }

    /// Both kept encodings follow every change: joins are appended to them,
    /// anything else rebuilds them.
    #[test]
    fn the_kept_encodings_match_the_members() {
        let members = |r: &Replica| {
            let list: Vec<serde_json::Value> = serde_json::from_str(r.list_json()).unwrap();
            let mut keys: Vec<String> = list.iter().map(|m| m["key"].as_str().unwrap().to_owned()).collect();
            keys.sort();
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(r.map_json()).unwrap();
            let from_map: Vec<String> = map.keys().cloned().collect();
            assert_eq!(keys, from_map, "both encodings list the same members");
            for member in &list {
                assert_eq!(map[member["key"].as_str().unwrap()], member["data"]);
            }
            keys
        };
        let mut r = Replica::default();
        assert_eq!((r.list_json(), r.map_json()), ("[]", "{}"));
        r.apply(1, Join, "a", "1");
        r.apply(2, Join, "b", "2");
        assert_eq!(members(&r), ["a", "b"]);
        r.apply(3, Join, "c", "3"); // appended to the kept list
        assert_eq!(members(&r), ["a", "b", "c"]);
        r.apply(4, Leave, "b", "null");
        assert_eq!(members(&r), ["a", "c"]);
        r.apply(5, Updated, "a", "9");
        assert!(r.list_json().contains(r#"{"key":"a","data":9}"#));
        assert!(r.map_json().contains(r#""a":9"#));
        r.install(&snapshot(10, &[("z", "0")]));
        assert_eq!(members(&r), ["z"]);
        r.apply(11, Join, "y", "1");
        assert_eq!(members(&r), ["y", "z"]);
    }

    /// A snapshot neither loses nor doubles events that raced with it.
    #[test]
    fn snapshot_merges_with_racing_events() {
        let mut r = Replica::default();
        assert!(r.apply(12, Join, "late", "2").is_some()); // arrived before the snapshot (seq 10) was read
        let shown = r.install(&snapshot(10, &[("a", "1")]));
        assert_eq!(shown, vec![(Join, "a".into(), "1".into())]);
        assert!(r.apply(9, Join, "b", "3").is_none()); // covered by the snapshot
        let mut members: Vec<_> = r.members().collect();
        members.sort();
        assert_eq!(members, vec![("a", "1"), ("late", "2")]);
        // a re-read that no longer has `a` shows its leave, once
        let shown = r.install(&snapshot(20, &[("late", "2")]));
        assert_eq!(shown, vec![(Leave, "a".into(), "1".into())]);
        assert!(r.install(&snapshot(20, &[("late", "2")])).is_empty());
    }
}
