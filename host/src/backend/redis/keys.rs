//! Redis key and channel names of one topic. Every name carries the topic in a
//! `{…}` hash tag, so one topic lives in one cluster slot; the names end in a
//! fixed suffix, so any topic string — `|`, `:`, `{`, `}`, spaces, unicode —
//! maps to its own keys, and a topic can be read back from a channel name.

/// The keys and channel of one topic under one prefix.
pub struct TopicKeys {
    pub users: String,
    pub refs: String,
    pub inst: String,
    pub seq: String,
    pub epoch: String,
    /// `held:<instance>` without the instance id (always 16 hex characters).
    pub held_prefix: String,
    pub channel: String,
}

const CHANNEL_SUFFIX: &str = "}:events";

impl TopicKeys {
    pub fn new(prefix: &str, topic: &str) -> Self {
        let base = format!("{prefix}:{{{topic}");
        Self {
            users: format!("{base}}}:users"),
            refs: format!("{base}}}:refs"),
            inst: format!("{base}}}:inst"),
            seq: format!("{base}}}:seq"),
            epoch: format!("{base}}}:epoch"),
            held_prefix: format!("{base}}}:held:"),
            channel: format!("{base}{CHANNEL_SUFFIX}"),
        }
    }

    pub fn held(&self, instance: &str) -> String {
        format!("{}{instance}", self.held_prefix)
    }
}

/// The topic a channel name belongs to, if it is one of ours.
pub fn topic_of_channel<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel.strip_prefix(prefix)?.strip_prefix(":{")?.strip_suffix(CHANNEL_SUFFIX)
}

/// The topic a key belongs to, if it is one of ours (used by clear's SCAN).
pub fn topic_of_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(":{")?;
    for suffix in ["}:users", "}:refs", "}:inst", "}:seq", "}:epoch"] {
        if let Some(topic) = rest.strip_suffix(suffix) {
            return Some(topic);
        }
    }
    let (topic, instance) = rest.rsplit_once("}:held:")?;
    (instance.len() == 16 && instance.bytes().all(|b| b.is_ascii_hexdigit())).then_some(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile topics round-trip through channel and key names unambiguously.
    #[test]
    fn topics_round_trip() {
        for topic in ["room", "a|b", "}:users", "{x}", "a}:held:0123456789abcdef", "ü 💬", ""] {
            let keys = TopicKeys::new("p", topic);
            assert_eq!(topic_of_channel("p", &keys.channel), Some(topic));
            for key in [&keys.users, &keys.refs, &keys.inst, &keys.seq, &keys.epoch] {
                assert_eq!(topic_of_key("p", key), Some(topic), "{key}");
            }
            assert_eq!(topic_of_key("p", &keys.held("0123456789abcdef")), Some(topic));
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
