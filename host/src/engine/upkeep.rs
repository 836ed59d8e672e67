//! Which topics a heartbeat tick also verifies or renews. Every tick refreshes
//! each hold and sweeps; checking a topic closely (its holds counted, its
//! latest state read) and renewing its keys' backstop expiry are needed only
//! every few ticks. Each topic has its own phase, so every tick does about the
//! same share of that work instead of one tick doing all of it.

use crate::backend::backstop;
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// A topic is verified every this many ticks. The losses that matter are
/// found at once regardless: the store verifies a topic whose hold a join had
/// to re-create, and a resync (a reconnect, a restart, a failover) has the
/// next tick verify its topics. This is the backstop for what nothing
/// announces, like events lost in flight on a live connection.
const VERIFY_EVERY: u64 = 16;

/// When each topic's verify and renewal fall due.
#[derive(Debug, Clone, Copy)]
pub(super) struct Upkeep {
    renew_every: u64,
}

/// What one tick does for one topic beyond refreshing and sweeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Duties {
    pub verify: bool,
    pub renew: bool,
}

impl Upkeep {
    /// Renew each topic's backstop with two `ttl`s to spare: ticks that run
    /// later than that have let the holds expire anyway, and the tick after
    /// them finds the loss and re-asserts the users.
    pub fn new(heartbeat: Duration, ttl: Duration) -> Self {
        let spare = backstop(ttl).saturating_sub(ttl * 2);
        let renew_every = (spare.as_millis() / heartbeat.as_millis().max(1)).max(1);
        Self { renew_every: renew_every as u64 }
    }

    /// The duties of tick number `tick` on `topic`.
    pub fn duties(&self, tick: u64, topic: &str) -> Duties {
        let mut hasher = std::hash::DefaultHasher::new();
        topic.hash(&mut hasher);
        let at = tick.wrapping_add(hasher.finish());
        Duties { verify: at.is_multiple_of(VERIFY_EVERY), renew: at.is_multiple_of(self.renew_every) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_is_verified_and_renewed_on_schedule_and_ticks_share_the_work() {
        let heartbeat = Duration::from_secs(30);
        let upkeep = Upkeep::new(heartbeat, Duration::from_secs(90));
        assert_eq!(upkeep.renew_every, 24, "backstop 900 s, renewed every 720 s");
        let topics: Vec<String> = (0..1000).map(|i| format!("room-{i}")).collect();
        let mut last = vec![(None::<u64>, None::<u64>); topics.len()];
        for tick in 0..80 {
            let mut verified = 0;
            for (i, topic) in topics.iter().enumerate() {
                let duties = upkeep.duties(tick, topic);
                let (verified_at, renewed_at) = &mut last[i];
                for (due, seen, every) in
                    [(duties.verify, verified_at, VERIFY_EVERY), (duties.renew, renewed_at, upkeep.renew_every)]
                {
                    if due {
                        if let Some(before) = seen.replace(tick) {
                            assert_eq!(tick - before, every, "{topic}");
                        }
                    }
                }
                verified += duties.verify as usize;
            }
            assert!((30..=100).contains(&verified), "tick {tick} verified {verified} of 1000 topics");
        }
        assert!(last.iter().all(|(v, r)| v.is_some() && r.is_some()));
    }

    #[test]
    fn the_renewal_period_follows_heartbeat_and_ttl() {
        let upkeep = Upkeep::new(Duration::from_secs(3600), Duration::from_secs(3601));
        assert_eq!(upkeep.renew_every, 8);
        let upkeep = Upkeep::new(Duration::from_millis(1), Duration::from_millis(2));
        assert_eq!(upkeep.renew_every, 59_996);
        let upkeep = Upkeep { renew_every: 1 };
        assert!((0..10).all(|tick| upkeep.duties(tick, "t").renew));
    }
}
