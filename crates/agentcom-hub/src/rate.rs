//! Rate limits as the hub applies them: token buckets ([`agentcom_core::rate`]) behind a
//! lock, read against a monotonic clock.
//!
//! [`CallerLimits`] keeps one bucket per caller, keyed by the agent id and role its
//! credential resolves to, so every token and dashboard session of that caller, on HTTP
//! and on every websocket it has open, draws on the same bucket. The HTTP layer keeps a
//! [`RateLimiter`] of its own for unauthenticated requests, keyed by address.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentcom_core::auth::Role;
use agentcom_core::rate::{Buckets, Limit, Limited};

use crate::Principal;

/// Callers with a bucket at once; beyond that (callers that all made a request within
/// the last refill time) new callers share one bucket until a sweep makes room.
pub const MAX_CALLERS: usize = 1 << 17;

/// How often buckets that are full again are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Buckets of one kind of caller under one limit, or no limit.
pub struct RateLimiter<K> {
    buckets: Option<Mutex<Buckets<K>>>,
    epoch: Instant,
    refused: AtomicU64,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// At most `max_keys` buckets; `None` lets everything through.
    pub fn new(limit: Option<Limit>, max_keys: usize) -> Self {
        RateLimiter {
            buckets: limit.map(|l| Mutex::new(Buckets::new(l, max_keys, SWEEP_EVERY))),
            epoch: Instant::now(),
            refused: AtomicU64::new(0),
        }
    }

    /// Is there a limit at all?
    pub fn is_on(&self) -> bool {
        self.buckets.is_some()
    }

    /// Take a token from `key`'s bucket now.
    pub fn check(&self, key: &K) -> Result<(), Limited> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        let now = self.epoch.elapsed();
        // A bucket map is plain data, valid after any panic: a poisoned lock is used as is.
        let result = buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take(key, now);
        if result.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Requests refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Buckets kept now.
    pub fn tracked(&self) -> usize {
        self.buckets.as_ref().map_or(0, |b| {
            b.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .len()
        })
    }
}

/// What identifies a caller to the limiter: its agent id and role.
pub type CallerKey = (Role, String);

/// The per-caller limit on HTTP requests and websocket frames.
pub struct CallerLimits {
    limiter: RateLimiter<CallerKey>,
    /// Whether admin callers are limited too.
    admins: bool,
}

impl CallerLimits {
    pub fn new(limit: Option<Limit>, admins: bool) -> Self {
        CallerLimits {
            limiter: RateLimiter::new(limit, MAX_CALLERS),
            admins,
        }
    }

    /// Is any caller limited at all?
    pub fn is_on(&self) -> bool {
        self.limiter.is_on()
    }

    /// Take a token for one request or frame of `who`.
    pub fn check(&self, who: &Principal) -> Result<(), Limited> {
        if who.role.is_admin() && !self.admins {
            return Ok(());
        }
        self.limiter.check(&(who.role, who.agent_id.clone()))
    }

    /// Requests and frames refused since the start.
    pub fn refused(&self) -> u64 {
        self.limiter.refused()
    }

    /// Callers with a bucket now.
    pub fn tracked(&self) -> usize {
        self.limiter.tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Proof;

    fn principal(agent_id: &str, role: Role, token: &[u8]) -> Principal {
        Principal {
            agent_id: agent_id.into(),
            role,
            proof: Proof::Token(token.to_vec()),
        }
    }

    #[test]
    fn every_credential_of_a_caller_shares_its_bucket() {
        let limits = CallerLimits::new(Limit::per_second(0.001, 2), false);
        let first = principal("bob", Role::Agent, b"one");
        let second = principal("bob", Role::Agent, b"two");
        assert!(limits.check(&first).is_ok());
        assert!(limits.check(&second).is_ok());
        assert!(limits.check(&first).is_err());
        assert!(limits.check(&second).is_err());
        // Another role of the same id is another caller.
        assert!(limits
            .check(&principal("bob", Role::Viewer, b"three"))
            .is_ok());
        assert_eq!(limits.refused(), 2);
        assert_eq!(limits.tracked(), 2);
    }

    #[test]
    fn admins_are_limited_only_when_asked() {
        let admin = principal("ops", Role::Admin, b"root");
        let unlimited = CallerLimits::new(Limit::per_second(0.001, 1), false);
        assert!((0..100).all(|_| unlimited.check(&admin).is_ok()));
        let limited = CallerLimits::new(Limit::per_second(0.001, 1), true);
        assert!(limited.check(&admin).is_ok());
        assert!(limited.check(&admin).is_err());
    }

    #[test]
    fn no_limit_lets_everything_through_and_keeps_nothing() {
        let limits = CallerLimits::new(None, true);
        assert!(!limits.is_on());
        let bob = principal("bob", Role::Agent, b"one");
        assert!((0..1000).all(|_| limits.check(&bob).is_ok()));
        assert_eq!(limits.tracked(), 0);
    }
}
