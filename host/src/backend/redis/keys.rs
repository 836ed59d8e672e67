//! Redis key and channel names of one topic: `<prefix>{:<topic>}:<suffix>`.
//!
//! Every name carries the topic in a `{…}` hash tag, so one topic lives in one
//! cluster slot. The tag opens with `:`, so it is never empty — an empty tag
//! (`{}`, as a topic `""` or `"}x"` would make right after the brace) would
//! hash each key on its own and split the topic over slots. The names end in
//! a fixed suffix, so any topic string — `|`, `:`, `{`, `}`, spaces, unicode —
//! maps to its own keys, and a topic can be read back from a channel name.

/// The keys and channel of one topic under one prefix.
pub struct TopicKeys {
    /// Hash: user key → public data shown.
    pub users: String,
    /// Hash: user key → how many instances hold the user.
    pub refs: String,
    /// Sorted set: instance → expiry of its hold.
    pub inst: String,
    /// String: the last sequence number.
    pub seq: String,
    /// String: the epoch `clear()` stamps.
    pub epoch: String,
    /// Sorted set: `<instance><user>` for every hold.
    pub holds: String,
    /// Hash: instance → its connections on the topic, as last reported.
    pub conns: String,
    /// The pub/sub channel of the topic's events.
    pub channel: String,
}

const CHANNEL_SUFFIX: &str = "}:events";

/// Each key's suffix, in the order every script declares the keys
/// (`prelude.lua`): the one list names are built from and read back by.
const KEY_SUFFIXES: [&str; 7] = ["}:users", "}:refs", "}:inst", "}:holds", "}:seq", "}:epoch", "}:conns"];
const INST: usize = 2;

impl TopicKeys {
    /// Every key, in the order every script declares them (`prelude.lua`).
    pub fn all(&self) -> [&str; 7] {
        [&self.users, &self.refs, &self.inst, &self.holds, &self.seq, &self.epoch, &self.conns]
    }

    /// The names of `topic` under `prefix`.
    pub fn new(prefix: &str, topic: &str) -> Self {
        let base = format!("{prefix}{{:{topic}");
        let [users, refs, inst, holds, seq, epoch, conns] = KEY_SUFFIXES.map(|suffix| format!("{base}{suffix}"));
        Self { users, refs, inst, seq, epoch, holds, conns, channel: format!("{base}{CHANNEL_SUFFIX}") }
    }

    /// Only the `inst` key of `topic` (all a quick tick declares): one name
    /// built instead of nine, for most topics on every heartbeat.
    pub fn inst(prefix: &str, topic: &str) -> String {
        format!("{prefix}{{:{topic}{}", KEY_SUFFIXES[INST])
    }
}

/// The cluster slot of every key and the channel of `topic`, computed as
/// Redis does from their hash tag (`:` and the topic up to its first `}`)
/// without building a name.
pub fn topic_slot(topic: &str) -> u16 {
    let tagged = topic.split('}').next().unwrap_or("");
    super::slots::slot_of_parts(&[b":", tagged.as_bytes()])
}

/// A glob (for SCAN and PUBSUB) matching every key and channel of every
/// topic under `prefix` (validated: no glob characters).
pub fn pattern(prefix: &str) -> String {
    format!("{prefix}{{:*")
}

/// The topic a channel name belongs to, if it is one of ours.
pub fn topic_of_channel<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel.strip_prefix(prefix)?.strip_prefix("{:")?.strip_suffix(CHANNEL_SUFFIX)
}

/// The topic a key belongs to, if it is one of ours (used by clear's SCAN).
pub fn topic_of_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("{:")?;
    KEY_SUFFIXES.iter().find_map(|suffix| rest.strip_suffix(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile topics round-trip through channel and key names unambiguously.
    #[test]
    fn topics_round_trip() {
        for topic in ["room", "a|b", "}:users", "{x}", "a}:holds", "b}:conns", "ü 💬", ""] {
            let keys = TopicKeys::new("p", topic);
            assert_eq!(TopicKeys::inst("p", topic), keys.inst);
            assert_eq!(topic_of_channel("p", &keys.channel), Some(topic));
            for key in keys.all() {
                assert_eq!(topic_of_key("p", key), Some(topic), "{key}");
            }
        }
    }

    /// Every key and the channel of a topic share one slot, whatever the topic.
    #[test]
    fn one_topic_one_slot() {
        for topic in ["", "}", "}x", "{", "{}", "a}b", "ü"] {
            let keys = TopicKeys::new("p", topic);
            let slot = crate::backend::redis::slots::slot_of(keys.users.as_bytes());
            assert_eq!(topic_slot(topic), slot, "{topic:?}");
            for name in keys.all().into_iter().chain([keys.channel.as_str()]) {
                assert_eq!(crate::backend::redis::slots::slot_of(name.as_bytes()), slot, "{topic:?}: {name}");
            }
        }
    }

    /// Distinct topics never share a key.
    #[test]
    fn distinct_topics_distinct_keys() {
        let a = TopicKeys::new("p", "x}:users");
        let b = TopicKeys::new("p", "x");
        assert_ne!(a.users, b.users);
        assert_ne!(a.refs, b.users);
    }
}
