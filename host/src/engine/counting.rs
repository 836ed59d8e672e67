//! Count-only topics: beyond a number of members, a topic's subscribers get
//! its member count instead of its members.
//!
//! A rule names a topic prefix and a threshold (`above`): a topic whose name
//! starts with the prefix (the longest matching prefix wins) switches to
//! counts once it lists more than `above` users, and back to members once it
//! lists `above` minus a tenth or fewer, so a room at the edge does not flap.
//! Rules come from [`super::Options::count_only`] and from the plugin
//! ([`super::Presence::set_count_only`]).
//!
//! While a topic counts, its subscribers on `__presence:<topic>` receive
//! `{"topic":"__presence:<topic>","event":"count","data":N}`, at most one per
//! topic per [`super::Options::count_window`], and no member events or
//! heartbeat envelopes. On entering the mode they are sent an empty member
//! list (so no stale partial list stays on screen), on leaving it the full one.

use super::{lock, presence_topic, Envelope, Inner};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Most rules at once (the options' and the plugin's).
pub(crate) const MAX_RULES: usize = 1024;

/// The rules, with a generation that changes with them so topics can cache
/// their threshold.
#[derive(Default)]
pub(crate) struct CountRules {
    rules: RwLock<BTreeMap<String, u64>>,
    generation: AtomicU64,
}

impl CountRules {
    pub fn new(rules: BTreeMap<String, u64>) -> Self {
        Self { rules: RwLock::new(rules), generation: AtomicU64::new(1) }
    }

    /// Set (`Some`) or remove (`None`) the rule for `prefix`. False if there
    /// are already [`MAX_RULES`] other rules. Setting a rule that is already
    /// there changes nothing (a plugin may set it on every subscribe).
    pub fn set(&self, prefix: &str, above: Option<u64>) -> bool {
        if self.rules.read().unwrap_or_else(|p| p.into_inner()).get(prefix).copied() == above {
            return true;
        }
        let mut rules = self.rules.write().unwrap_or_else(|p| p.into_inner());
        match above {
            Some(above) => {
                if rules.len() >= MAX_RULES && !rules.contains_key(prefix) {
                    return false;
                }
                rules.insert(prefix.to_owned(), above);
            }
            None => {
                rules.remove(prefix);
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// The threshold for `topic`: its longest matching prefix's.
    fn above(&self, topic: &str) -> Option<u64> {
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner());
        rules
            .iter()
            .filter(|(prefix, _)| topic.starts_with(prefix.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| *a)
    }
}

/// What a change did to a topic's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Members, as before the change.
    Members,
    /// Counts, as before the change.
    Counting,
    /// It just started counting.
    Entered,
    /// It just stopped counting.
    Left,
}

/// One topic's mode, with its cached threshold.
#[derive(Default)]
pub(crate) struct Counting {
    /// The rules' generation `above` was read at (0: never).
    generation: u64,
    above: Option<u64>,
    active: bool,
}

impl Counting {
    /// True while the topic publishes counts instead of members.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The mode for a topic of `members` users under `rules`.
    pub fn update(&mut self, rules: &CountRules, topic: &str, members: usize) -> Mode {
        let generation = rules.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.above = rules.above(topic);
        }
        let members = members as u64;
        let was = self.active;
        self.active = match self.above {
            None => false,
            Some(above) if was => members > above - above / 10,
            Some(above) => members > above,
        };
        match (was, self.active) {
            (false, false) => Mode::Members,
            (true, true) => Mode::Counting,
            (false, true) => Mode::Entered,
            (true, false) => Mode::Left,
        }
    }
}

impl Inner {
    /// Send the `count` events owed (run once per `count_window`).
    pub(super) fn publish_counts(&self) {
        let due = std::mem::take(&mut *lock(&self.counts_due));
        for name in due {
            let Some(topic) = lock(&self.topics).get(&name).cloned() else { continue };
            let state = topic.lock();
            if state.counting.active() && !state.detached {
                self.platform.publish(&presence_topic(&name), &Envelope::count(&name, state.replica.len()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest prefix wins; a topic enters above the threshold and
    /// leaves a tenth below it; a changed rule applies at the next change.
    #[test]
    fn modes_follow_the_rules_with_a_margin() {
        let rules = CountRules::new(BTreeMap::from([("big:".to_owned(), 100), ("big:huge:".to_owned(), 1000)]));
        let mut room = Counting::default();
        assert_eq!(room.update(&rules, "big:room", 100), Mode::Members);
        assert_eq!(room.update(&rules, "big:room", 101), Mode::Entered);
        assert_eq!(room.update(&rules, "big:room", 91), Mode::Counting);
        assert_eq!(room.update(&rules, "big:room", 90), Mode::Left);
        let mut huge = Counting::default();
        assert_eq!(huge.update(&rules, "big:huge:1", 500), Mode::Members);
        let mut other = Counting::default();
        assert_eq!(other.update(&rules, "small", 1_000_000), Mode::Members);
        assert!(rules.set("", Some(10)));
        assert_eq!(other.update(&rules, "small", 11), Mode::Entered);
        assert!(rules.set("", None));
        assert_eq!(other.update(&rules, "small", 11), Mode::Left);
    }

    #[test]
    fn plugin_rules_are_bounded() {
        let rules = CountRules::default();
        for i in 0..MAX_RULES {
            assert!(rules.set(&format!("p{i}:"), Some(1)));
        }
        assert!(!rules.set("one-more:", Some(1)));
        assert!(rules.set("p0:", Some(2)), "an existing rule can change");
    }
}
