//! Topics nothing local uses any more, kept for a moment before they are
//! forgotten: a client that subscribes and unsubscribes in a loop then costs
//! no whole-room snapshot per subscribe (the lingering topic is still
//! watched, its replica still kept by events), while an idle topic does not
//! stay forever. Bounded twice: a topic lingers at most [`Linger::period`],
//! and at most [`MAX_LINGERING`] topics linger (the oldest goes first).
//! Lingering topics do not count against `max_topics_per_instance`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many idle topics may linger at once.
pub(super) const MAX_LINGERING: usize = 1024;

/// The lingering topics, oldest first.
pub(super) struct Linger {
    period: Duration,
    since: HashMap<String, Instant>,
    order: VecDeque<String>,
}

impl Linger {
    /// Topics linger for `period`.
    pub fn new(period: Duration) -> Self {
        Self { period, since: HashMap::new(), order: VecDeque::new() }
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.since.contains_key(topic)
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// `topic` became idle; returns the topics that must go now to keep the
    /// bound (oldest first).
    pub fn start(&mut self, topic: &str) -> Vec<String> {
        if self.since.insert(topic.to_owned(), Instant::now()).is_none() {
            self.order.push_back(topic.to_owned());
        }
        let mut evicted = Vec::new();
        while self.since.len() > MAX_LINGERING {
            let Some(oldest) = self.order.pop_front() else { break };
            if self.since.remove(&oldest).is_some() {
                evicted.push(oldest);
            }
        }
        evicted
    }

    /// `topic` is used again (or was dropped): it no longer lingers.
    pub fn stop(&mut self, topic: &str) -> bool {
        let was = self.since.remove(topic).is_some();
        if was && self.order.len() > 2 * self.since.len() + 16 {
            // Names of topics revived are left in `order`; sweep them now and then.
            let since = &self.since;
            self.order.retain(|t| since.contains_key(t));
        }
        was
    }

    /// The topics whose period is over.
    pub fn expired(&mut self) -> Vec<String> {
        let mut expired = Vec::new();
        while let Some(oldest) = self.order.front() {
            match self.since.get(oldest) {
                Some(at) if at.elapsed() < self.period => break,
                Some(_) => {
                    let name = self.order.pop_front().expect("just looked");
                    self.since.remove(&name);
                    expired.push(name);
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_time_and_count() {
        let mut linger = Linger::new(Duration::from_millis(30));
        assert!(linger.start("a").is_empty());
        assert!(linger.contains("a") && linger.len() == 1);
        assert!(linger.stop("a") && !linger.contains("a"));
        assert!(linger.start("a").is_empty());
        std::thread::sleep(Duration::from_millis(40));
        assert!(linger.start("b").is_empty());
        assert_eq!(linger.expired(), ["a"], "only the one whose period is over");
        for n in 0..MAX_LINGERING {
            linger.start(&format!("t{n}"));
        }
        assert_eq!(linger.len(), MAX_LINGERING);
        assert!(!linger.contains("b"), "the oldest went first");
    }
}
