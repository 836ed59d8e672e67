//! The one message shape clients receive — `{"topic","event","data"}` — and
//! the builders for the presence events of the svelte-adapter-uws protocol.

use serde::Serialize;
use serde_json::value::RawValue;

/// Prefix of the topic that carries a topic's presence events (one constant
/// for the host and the guest SDK, in `presence-defaults`).
pub use presence_defaults::PRESENCE_PREFIX;

/// `__presence:<topic>`.
pub fn presence_topic(topic: &str) -> String {
    format!("{PRESENCE_PREFIX}{topic}")
}

/// One server → client message. `data` is kept as JSON text so it is
/// serialised once, however many connections receive it.
///
/// ```
/// use presence::Envelope;
///
/// let count = Envelope::count("stadium", 40_000);
/// assert_eq!(count.to_json(), r#"{"topic":"__presence:stadium","event":"count","data":40000}"#);
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    /// The topic it belongs to (`__presence:<topic>` for presence events).
    pub topic: String,
    /// The event name (`list`, `join`, `leave`, `updated`, …).
    pub event: String,
    /// The payload, as JSON.
    pub data: Box<RawValue>,
}

impl Envelope {
    /// An envelope of `event` on `topic` carrying `data`.
    pub fn new(topic: impl Into<String>, event: impl Into<String>, data: Box<RawValue>) -> Self {
        Self { topic: topic.into(), event: event.into(), data }
    }

    /// `{"topic":…,"event":…,"data":…}`, as the legacy clients read it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an envelope always serialises")
    }

    /// `{"key":…,"data":…}` for `join`, `leave` and `updated` on `topic`.
    pub fn member(topic: &str, event: &str, key: &str, data: &str) -> Self {
        Self::new(presence_topic(topic), event, raw(member_json(key, data)))
    }

    /// `list`: every member, the receiver included, given as a JSON array
    /// of `{"key","data"}` objects.
    pub fn list(topic: &str, members_json: String) -> Self {
        Self::new(presence_topic(topic), "list", raw(members_json))
    }

    /// `count`: how many users a count-only topic lists.
    pub fn count(topic: &str, members: usize) -> Self {
        Self::new(presence_topic(topic), "count", raw(members.to_string()))
    }

    /// `heartbeat`: the keys still alive.
    pub fn heartbeat<'a>(topic: &str, keys: impl Iterator<Item = &'a str>) -> Self {
        let keys: Vec<&str> = keys.collect();
        let json = serde_json::to_string(&keys).expect("strings serialise");
        Self::new(presence_topic(topic), "heartbeat", raw(json))
    }
}

pub(crate) fn member_json(key: &str, data: &str) -> String {
    format!(r#"{{"key":{},"data":{data}}}"#, serde_json::to_string(key).expect("strings serialise"))
}

/// Wrap JSON text the engine produced itself (always valid).
fn raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json).expect("engine-built JSON is valid")
}
