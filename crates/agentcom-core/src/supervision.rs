//! Restart policy for supervised actors: one-for-one restarts with exponential backoff.
//!
//! The original stopped the whole hub after more than 3 crashes in 5 s (C1). Here a crash
//! loop only slows its own restarts down; the rest of the hub is never affected.

use std::time::Duration;

/// How quickly a crashed child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the restart that follows the first crash of a streak.
    pub initial_delay: Duration,
    /// Upper bound of the delay, however long the streak.
    pub max_delay: Duration,
    /// A child that stayed up this long since its last start begins a new streak.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// The delay before restarting after the `streak`-th consecutive crash (1-based):
    /// `initial_delay * 2^(streak-1)`, capped at `max_delay`.
    pub fn delay(&self, streak: u32) -> Duration {
        let exponent = streak.saturating_sub(1).min(30);
        self.initial_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay)
    }
}

/// The crash streak of one child: how many consecutive crashes happened without the child
/// staying up for `stable_after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashStreak {
    pub count: u32,
}

impl CrashStreak {
    /// Record a crash of a child that had been up for `uptime`, and return the delay to
    /// wait before restarting it.
    pub fn record_crash(&mut self, policy: &RestartPolicy, uptime: Duration) -> Duration {
        if uptime >= policy.stable_after {
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        policy.delay(self.count)
    }

    /// Is the child crash-looping (restarted more than twice in a row without settling)?
    pub fn is_looping(&self) -> bool {
        self.count > 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delays_double_then_cap() {
        let p = RestartPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            stable_after: Duration::from_secs(10),
        };
        let delays: Vec<u64> = (1..=6).map(|n| p.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_stable_child_starts_a_new_streak() {
        let p = RestartPolicy::default();
        let mut s = CrashStreak::default();
        let quick = Duration::from_millis(1);
        assert_eq!(s.record_crash(&p, quick), p.initial_delay);
        assert_eq!(s.record_crash(&p, quick), p.initial_delay * 2);
        assert_eq!(s.record_crash(&p, quick), p.initial_delay * 4);
        assert!(s.is_looping());
        assert_eq!(s.record_crash(&p, p.stable_after), p.initial_delay);
        assert!(!s.is_looping());
    }

    proptest! {
        #[test]
        fn delay_is_monotonic_and_bounded(streak in 1u32..10_000) {
            let p = RestartPolicy::default();
            prop_assert!(p.delay(streak) <= p.max_delay);
            prop_assert!(p.delay(streak) <= p.delay(streak + 1));
        }
    }
}
