//! Presence for current (0.5) clients: the `presence_state` / `presence_diff`
//! encoding of what the engine emits as `list` / `join` / `leave` /
//! `updated`, and the per-topic diff that coalesces changes between flushes.
//!
//! A diff keeps only the latest change per key — a data change is a `joins`
//! entry, and a key is never in both halves — so a burst of 1,000 joins into
//! a topic costs each current subscriber one frame per flush, built once and
//! shared by all of them.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// One member as the engine sends it: `{"key":…,"data":…}`.
#[derive(Deserialize)]
struct Member<'a> {
    key: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Changes to one topic since the last flush: key → data JSON; and the
/// `presence_state` frames of subscribers that joined meanwhile, which go out
/// with the diff, just ahead of it, rather than in a write of their own.
#[derive(Default)]
pub(super) struct Diff {
    joins: HashMap<String, String>,
    leaves: HashMap<String, String>,
    /// Joiners' states held for this diff: (connection, the shared state,
    /// the changes since it was built).
    pub held_states: Vec<(crate::ConnId, super::Frame, Option<super::Frame>)>,
}

impl Diff {
    /// Record one engine event (`join`, `updated`, `leave` with
    /// `{"key","data"}`); other events and malformed data are ignored.
    pub fn record(&mut self, event: &str, member: &RawValue) {
        let Ok(Member { key, data }) = serde_json::from_str::<Member>(member.get()) else {
            return;
        };
        let data = data.get().to_owned();
        match event {
            "join" | "updated" => {
                self.leaves.remove(&key);
                self.joins.insert(key, data);
            }
            "leave" => {
                self.joins.remove(&key);
                self.leaves.insert(key, data);
            }
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// Keys it changes.
    pub fn len(&self) -> usize {
        self.joins.len() + self.leaves.len()
    }

    /// `{"joins":{…},"leaves":{…}}`
    fn data_json(&self) -> String {
        let mut json = String::from(r#"{"joins":"#);
        push_map(&mut json, self.joins.iter());
        json.push_str(r#","leaves":"#);
        push_map(&mut json, self.leaves.iter());
        json.push('}');
        json
    }

    /// The whole `presence_diff` frame for `presence_topic` (`__presence:T`).
    pub fn frame(&self, presence_topic: &str, seq: u64) -> super::Frame {
        event_frame(presence_topic, "presence_diff", &self.data_json(), seq)
    }
}

/// One topic's `presence_state` as current joiners get it: built once and
/// shared by every joiner, however many join one after another, with the
/// changes since it was built (latest per key) sent after it as one small
/// `presence_diff` — state then changes add up to the topic as it is. So 40
/// joiners of a room of megabytes hold one copy of it, not 40. Built again
/// once the changes since are many next to the room.
pub(super) struct Base {
    pub frame: super::Frame,
    since: Diff,
    /// `since` as a frame, until the next change.
    since_frame: Option<super::Frame>,
}

impl Base {
    pub fn new(frame: super::Frame) -> Self {
        Self { frame, since: Diff::default(), since_frame: None }
    }

    /// A change of the topic (after the state was built).
    pub fn record(&mut self, event: &str, member: &RawValue) {
        self.since.record(event, member);
        self.since_frame = None;
    }

    /// Better built again than sent with its changes, in a room of `members`.
    pub fn is_stale(&self, members: usize) -> bool {
        self.since.len() > (members / 8).max(32)
    }

    /// The changes since the state, as a `presence_diff` (none if there were none).
    pub fn since_frame(&mut self, presence_topic: &str, seq: u64) -> Option<super::Frame> {
        if self.since.is_empty() {
            return None;
        }
        Some(self.since_frame.get_or_insert_with(|| self.since.frame(presence_topic, seq)).clone())
    }
}

fn push_map<'a>(json: &mut String, entries: impl Iterator<Item = (&'a String, &'a String)>) {
    json.push('{');
    for (i, (key, data)) in entries.enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(key).expect("strings serialise"));
        json.push(':');
        json.push_str(data);
    }
    json.push('}');
}

/// `{"topic":…,"event":…,"data":…,"seq":…}` with `data` already JSON,
/// copied once (it can be a whole topic's members).
pub(super) fn event_frame(topic: &str, event: &str, data: &str, seq: u64) -> super::Frame {
    let topic = serde_json::to_string(topic).expect("strings serialise");
    let (head, tail) = (format!(r#"{{"topic":{topic},"event":"{event}","data":"#), format!(r#","seq":{seq}}}"#));
    super::frame::joined(&[&head, data, &tail])
}

/// A topic's members as a `presence_state` frame (`{key: data}`, built by
/// the engine once per change).
pub(super) fn state_frame(presence_topic: &str, members: &crate::engine::Members<'_>, seq: u64) -> super::Frame {
    event_frame(presence_topic, "presence_state", members.map_json(), seq)
}

/// Several event frames of one flush as one `{"type":"batch","events":[…]}`.
pub(super) fn batch_frame(frames: &[super::Frame]) -> String {
    let mut json = String::from(r#"{"type":"batch","events":["#);
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(frame);
    }
    json.push_str("]}");
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn raw(value: Value) -> Box<RawValue> {
        RawValue::from_string(value.to_string()).unwrap()
    }

    /// A state frame is an event frame whose data is the members' map.
    #[test]
    fn a_state_frame_is_the_event_frame_it_replaces() {
        let topic = "__presence:t \"q\"";
        let members = crate::engine::Members::none();
        assert_eq!(state_frame(topic, &members, 7), event_frame(topic, "presence_state", members.map_json(), 7));
        let frame: serde_json::Value = serde_json::from_str(&state_frame(topic, &members, 7)).unwrap();
        assert_eq!(frame, json!({"topic": topic, "event": "presence_state", "data": {}, "seq": 7}));
    }

    /// The latest change per key wins; a key is never in both halves; a data
    /// change is a join.
    #[test]
    fn latest_change_per_key_wins() {
        let mut diff = Diff::default();
        diff.record("join", &raw(json!({"key": "a", "data": {"v": 1}})));
        diff.record("leave", &raw(json!({"key": "a", "data": {"v": 1}})));
        diff.record("join", &raw(json!({"key": "b", "data": {"v": 1}})));
        diff.record("updated", &raw(json!({"key": "b", "data": {"v": 2}})));
        diff.record("leave", &raw(json!({"key": "c", "data": null})));
        diff.record("join", &raw(json!({"key": "c", "data": {"v": 3}})));
        let frame: Value = serde_json::from_str(&diff.frame("__presence:t", 7)).unwrap();
        assert_eq!(frame["seq"], 7);
        assert_eq!(frame["data"], json!({"joins": {"b": {"v": 2}, "c": {"v": 3}}, "leaves": {"a": {"v": 1}}}));
    }
}
