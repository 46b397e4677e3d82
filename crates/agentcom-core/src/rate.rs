//! Token buckets: how often one caller may ask the hub for something.
//!
//! A bucket holds at most `burst` tokens and gains one every `interval`; each request takes
//! one, and a request that finds the bucket empty is refused with the time until the next
//! token. The state of a bucket is a single instant, the moment it will be full again (the
//! "theoretical arrival time" of the generic cell rate algorithm): a bucket whose moment has
//! passed is indistinguishable from a new one, which is what lets [`Buckets`] forget idle
//! callers without changing any decision.
//!
//! Time is passed in as a [`Duration`] since an arbitrary epoch of the caller's monotonic
//! clock; nothing here reads a clock. Arithmetic is in integer nanoseconds, widened to
//! `u128` and saturated, so no setting, however large or small, overflows or panics.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Time to gain one token, in nanoseconds (at least 1).
    interval: u64,
    /// Tokens a full bucket holds: requests that may come at once (at least 1).
    burst: u32,
}

impl Limit {
    /// `per_sec` requests a second on average, at most `burst` at once. `None` (no limit)
    /// when either is zero, or `per_sec` is not a positive number.
    pub fn per_second(per_sec: f64, burst: u32) -> Option<Limit> {
        if per_sec.is_nan() || per_sec <= 0.0 || burst == 0 {
            return None;
        }
        // A float-to-int `as` saturates: a tiny rate gives u64::MAX, an infinite one 0.
        let interval = ((1e9 / per_sec).round() as u64).max(1);
        Some(Limit { interval, burst })
    }

    /// Time to gain one token.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time for an empty bucket to fill up, in nanoseconds.
    fn depth(&self) -> u128 {
        u128::from(self.interval) * u128::from(self.burst)
    }
}

/// A refused request: when the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// The wait in whole milliseconds, rounded up (never 0: a caller told to wait 0 ms
    /// would retry at once and be refused again).
    pub fn retry_after_ms(&self) -> u64 {
        let nanos = self.retry_after.as_nanos();
        u64::try_from(nanos.div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The wait in whole seconds, rounded up, for an HTTP `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms().div_ceil(1000)
    }
}

fn nanos(t: Duration) -> u128 {
    t.as_nanos()
}

fn duration(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// One caller's bucket. A new bucket is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket will be full again, in nanoseconds since the epoch. (`u128`: the
    /// clock's whole range plus the deepest bucket fit, so nothing saturates here.)
    full_at: u128,
}

impl Bucket {
    /// Take a token for one request at `now`, or say how long until there is one. A
    /// refused request takes nothing.
    pub fn take(&mut self, limit: Limit, now: Duration) -> Result<(), Limited> {
        let now = nanos(now);
        let missing = self.full_at.saturating_sub(now);
        let after = missing + u128::from(limit.interval);
        if after > limit.depth() {
            return Err(Limited {
                retry_after: duration(after - limit.depth()),
            });
        }
        self.full_at = now + after;
        Ok(())
    }

    /// Is the bucket full at `now`, so that forgetting it changes nothing?
    pub fn is_full(&self, now: Duration) -> bool {
        self.full_at <= nanos(now)
    }

    /// Whole tokens in the bucket at `now`.
    pub fn tokens(&self, limit: Limit, now: Duration) -> u32 {
        let missing = self.full_at.saturating_sub(nanos(now));
        let spent = missing.div_ceil(u128::from(limit.interval));
        u32::try_from(u128::from(limit.burst).saturating_sub(spent)).unwrap_or(0)
    }
}

/// The buckets of many callers under one limit, in bounded memory.
///
/// At most `max_keys` buckets are kept. Buckets that are full again are dropped by a sweep
/// at most once every `sweep_every` (a full bucket is the same as a new one). While the
/// map is full of buckets still refilling, callers without a bucket share one overflow
/// bucket: a flood of new keys (say, addresses) together gets one caller's allowance
/// instead of growing the map or pushing out the debt of the callers already in it.
#[derive(Debug)]
pub struct Buckets<K> {
    limit: Limit,
    buckets: HashMap<K, Bucket>,
    max_keys: usize,
    overflow: Bucket,
    sweep_every: Duration,
    next_sweep: Duration,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(limit: Limit, max_keys: usize, sweep_every: Duration) -> Self {
        Buckets {
            limit,
            buckets: HashMap::new(),
            max_keys: max_keys.max(1),
            overflow: Bucket::default(),
            sweep_every,
            next_sweep: sweep_every,
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Take a token from `key`'s bucket at `now`.
    pub fn take(&mut self, key: &K, now: Duration) -> Result<(), Limited> {
        if now >= self.next_sweep {
            self.sweep(now);
        }
        let limit = self.limit;
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.take(limit, now);
        }
        if self.buckets.len() >= self.max_keys {
            return self.overflow.take(limit, now);
        }
        let mut bucket = Bucket::default();
        let taken = bucket.take(limit, now);
        self.buckets.insert(key.clone(), bucket);
        taken
    }

    /// Drop every bucket that is full at `now`.
    pub fn sweep(&mut self, now: Duration) {
        self.buckets.retain(|_, b| !b.is_full(now));
        self.next_sweep = now.saturating_add(self.sweep_every);
    }

    /// Buckets kept.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The key a peer's address is limited by: an IPv4 address (also when written as an
/// IPv4-mapped IPv6 address), or the /64 network of an IPv6 address: one host is usually
/// given a whole /64, and could otherwise take a fresh bucket per address.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// How many of `n` requests at `now` are let through.
    fn allowed(bucket: &mut Bucket, limit: Limit, now: Duration, n: usize) -> usize {
        (0..n).filter(|_| bucket.take(limit, now).is_ok()).count()
    }

    #[test]
    fn zero_or_nonsense_settings_mean_no_limit() {
        assert_eq!(Limit::per_second(0.0, 10), None);
        assert_eq!(Limit::per_second(10.0, 0), None);
        assert_eq!(Limit::per_second(-1.0, 10), None);
        assert_eq!(Limit::per_second(f64::NAN, 10), None);
        let limit = Limit::per_second(4.0, 2).unwrap();
        assert_eq!((limit.interval(), limit.burst()), (ms(250), 2));
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_refuses() {
        let limit = Limit::per_second(10.0, 5).unwrap();
        let mut bucket = Bucket::default();
        let t0 = ms(1_000);
        assert_eq!(allowed(&mut bucket, limit, t0, 8), 5);
        assert_eq!(bucket.tokens(limit, t0), 0);
        // The next token comes one interval (100 ms) after the burst.
        assert_eq!(
            bucket.take(limit, t0),
            Err(Limited {
                retry_after: ms(100)
            })
        );
        assert_eq!(
            bucket.take(limit, t0 + ms(40)),
            Err(Limited {
                retry_after: ms(60)
            })
        );
        assert_eq!(bucket.take(limit, t0 + ms(100)), Ok(()));
    }

    #[test]
    fn a_refused_request_takes_nothing() {
        let limit = Limit::per_second(1.0, 1).unwrap();
        let mut bucket = Bucket::default();
        assert!(bucket.take(limit, ms(0)).is_ok());
        for _ in 0..1000 {
            assert!(bucket.take(limit, ms(500)).is_err());
        }
        // Hammering while empty does not push the next token further away.
        assert_eq!(bucket.take(limit, ms(1_000)), Ok(()));
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_never_beyond_the_burst() {
        let limit = Limit::per_second(10.0, 5).unwrap();
        let mut bucket = Bucket::default();
        assert_eq!(allowed(&mut bucket, limit, ms(0), 5), 5);
        // 350 ms later: three whole tokens.
        assert_eq!(bucket.tokens(limit, ms(350)), 3);
        assert_eq!(allowed(&mut bucket, limit, ms(350), 10), 3);
        // Idle for an hour: full again, but no fuller than the burst.
        let later = ms(3_600_000);
        assert_eq!(bucket.tokens(limit, later), 5);
        assert!(bucket.is_full(later));
        assert_eq!(allowed(&mut bucket, limit, later, 10), 5);
    }

    #[test]
    fn sustained_traffic_gets_the_rate() {
        let limit = Limit::per_second(50.0, 10).unwrap();
        let mut bucket = Bucket::default();
        // A client asking every millisecond for ten seconds: the burst, then 50 a second.
        let granted = (0..10_000)
            .filter(|t| bucket.take(limit, ms(*t)).is_ok())
            .count();
        assert_eq!(granted, 10 + 500 - 1);
    }

    #[test]
    fn fractional_rates_work() {
        let limit = Limit::per_second(0.5, 1).unwrap();
        assert_eq!(limit.interval(), ms(2_000));
        let mut bucket = Bucket::default();
        assert!(bucket.take(limit, ms(0)).is_ok());
        let refused = bucket.take(limit, ms(1_500)).unwrap_err();
        assert_eq!(refused.retry_after_ms(), 500);
        assert!(bucket.take(limit, ms(2_000)).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        let l = |nanos| Limited {
            retry_after: Duration::from_nanos(nanos),
        };
        assert_eq!(l(1).retry_after_ms(), 1);
        assert_eq!(l(1_000_000).retry_after_ms(), 1);
        assert_eq!(l(1_000_001).retry_after_ms(), 2);
        assert_eq!(l(0).retry_after_ms(), 1);
        assert_eq!(l(1).retry_after_secs(), 1);
        assert_eq!(l(1_000_000_000).retry_after_secs(), 1);
        assert_eq!(l(1_000_000_001).retry_after_secs(), 2);
        let huge = Limited {
            retry_after: Duration::MAX,
        };
        assert_eq!(huge.retry_after_ms(), u64::MAX);
        assert_eq!(huge.retry_after_secs(), u64::MAX.div_ceil(1000));
    }

    #[test]
    fn huge_and_tiny_settings_saturate_instead_of_overflowing() {
        // Near-infinite rate and burst: everything passes, at any time.
        let fast = Limit::per_second(f64::INFINITY, u32::MAX).unwrap();
        assert_eq!(fast.interval(), Duration::from_nanos(1));
        let mut bucket = Bucket::default();
        assert_eq!(allowed(&mut bucket, fast, ms(0), 1000), 1000);
        assert_eq!(allowed(&mut bucket, fast, Duration::MAX, 1000), 1000);

        // A rate so small that one token takes longer than u64 nanoseconds can hold.
        let slow = Limit::per_second(1e-300, 1).unwrap();
        assert_eq!(slow.interval(), Duration::from_nanos(u64::MAX));
        let mut bucket = Bucket::default();
        assert!(bucket.take(slow, ms(5)).is_ok());
        let refused = bucket.take(slow, ms(5)).unwrap_err();
        assert!(refused.retry_after >= Duration::from_nanos(u64::MAX - 5_000_000));
        assert!(bucket
            .take(slow, Duration::from_secs(3600 * 24 * 365))
            .is_err());

        // A large burst of slow tokens: the depth exceeds u64 nanoseconds.
        let deep = Limit::per_second(1e-9, u32::MAX).unwrap();
        let mut bucket = Bucket::default();
        assert_eq!(allowed(&mut bucket, deep, ms(1), 100), 100);
        assert_eq!(bucket.tokens(deep, ms(1)), u32::MAX - 100);

        // Clock values at the end of the range.
        let limit = Limit::per_second(1.0, 2).unwrap();
        let mut bucket = Bucket::default();
        assert_eq!(allowed(&mut bucket, limit, Duration::MAX, 5), 2);
        assert!(bucket.take(limit, Duration::MAX).is_err());
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let limit = Limit::per_second(1.0, 2).unwrap();
        let mut buckets = Buckets::new(limit, 100, ms(1_000));
        assert!(buckets.take(&"a", ms(0)).is_ok());
        assert!(buckets.take(&"a", ms(0)).is_ok());
        assert!(buckets.take(&"a", ms(0)).is_err());
        assert!(buckets.take(&"b", ms(0)).is_ok());
        assert_eq!(buckets.len(), 2);
    }

    #[test]
    fn idle_buckets_are_swept_without_changing_any_answer() {
        let limit = Limit::per_second(10.0, 2).unwrap();
        let mut buckets = Buckets::new(limit, 1_000, ms(1_000));
        for key in 0..500u32 {
            assert!(buckets.take(&key, ms(0)).is_ok());
        }
        // Key 0 drains its bucket.
        assert!(buckets.take(&0, ms(0)).is_ok());
        assert!(buckets.take(&0, ms(0)).is_err());
        assert_eq!(buckets.len(), 500);
        // After the sweep interval every bucket is full again and dropped; a returning
        // key gets exactly what a kept bucket would have given it.
        assert!(buckets.take(&0, ms(1_000)).is_ok());
        assert_eq!(buckets.len(), 1);
        assert!(buckets.take(&0, ms(1_000)).is_ok());
        assert!(buckets.take(&0, ms(1_000)).is_err());
    }

    #[test]
    fn a_bucket_still_refilling_survives_the_sweep() {
        let limit = Limit::per_second(1.0, 3).unwrap();
        let mut buckets = Buckets::new(limit, 10, ms(100));
        for _ in 0..3 {
            assert!(buckets.take(&"flood", ms(0)).is_ok());
        }
        // 150 ms later a sweep runs; the flooder's bucket is not full, so it stays empty.
        assert!(buckets.take(&"other", ms(150)).is_ok());
        assert!(buckets.take(&"flood", ms(150)).is_err());
        assert_eq!(buckets.len(), 2);
    }

    #[test]
    fn new_keys_share_one_overflow_bucket_while_the_map_is_full() {
        let limit = Limit::per_second(1.0, 2).unwrap();
        let mut buckets = Buckets::new(limit, 3, ms(60_000));
        for key in 0..3u32 {
            assert!(buckets.take(&key, ms(0)).is_ok());
        }
        // A thousand more keys: the map does not grow, and together they get one burst.
        let through = (3..1_003u32)
            .filter(|key| buckets.take(key, ms(0)).is_ok())
            .count();
        assert_eq!(through, 2);
        assert_eq!(buckets.len(), 3);
        // Callers already in the map keep their own buckets.
        assert!(buckets.take(&0, ms(0)).is_ok());
        // Once the kept buckets are full again, a sweep frees their room.
        buckets.sweep(ms(5_000));
        assert!(buckets.is_empty());
        assert!(buckets.take(&7, ms(5_000)).is_ok());
        assert_eq!(buckets.len(), 1);
    }

    #[test]
    fn peers_are_keyed_by_ipv4_address_or_ipv6_network() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(peer_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(peer_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(peer_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            peer_key(ip("2001:db8:1:2:ffff:1:2:3")),
            peer_key(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            peer_key(ip("2001:db8:1:3::1")),
            peer_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(peer_key(ip("::1")), ip("::"));
    }
}
