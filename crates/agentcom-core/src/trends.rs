//! The dashboard's trend series: small, bounded, clocked by the caller, so that a page
//! loaded at any moment can draw the last hour instead of an empty chart.

use std::collections::VecDeque;

use crate::Millis;

pub const MINUTE_MS: Millis = 60_000;

/// Counts per whole minute over a sliding window (e.g. tasks completed per minute over
/// the last hour). Only minutes that saw something are held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerMinute {
    minutes: usize,
    /// (start of the minute, count), oldest first.
    buckets: VecDeque<(Millis, u64)>,
}

/// A window of [`PerMinute`] counts: `counts[i]` is the minute starting at
/// `start + i * MINUTE_MS`; the last one is the current minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCounts {
    pub start: Millis,
    pub counts: Vec<u64>,
}

impl PerMinute {
    /// A window of `minutes` minutes (at least one), the current one included.
    pub fn new(minutes: usize) -> Self {
        PerMinute {
            minutes: minutes.max(1),
            buckets: VecDeque::new(),
        }
    }

    /// One more at `at`. Events older than the window are dropped; an event out of order
    /// within the window still lands in its own minute.
    pub fn add(&mut self, at: Millis) {
        let minute = minute_of(at);
        self.prune(minute);
        if minute < self.window_start(self.newest().max(minute)) {
            return;
        }
        match self.buckets.iter().position(|(m, _)| *m >= minute) {
            Some(i) if self.buckets[i].0 == minute => self.buckets[i].1 += 1,
            Some(i) => self.buckets.insert(i, (minute, 1)),
            None => self.buckets.push_back((minute, 1)),
        }
    }

    /// The window ending with the minute of `now`, oldest first.
    pub fn window(&self, now: Millis) -> MinuteCounts {
        let start = self.window_start(minute_of(now));
        let mut counts = vec![0; self.minutes];
        for (minute, n) in &self.buckets {
            if *minute >= start {
                let i = ((minute - start) / MINUTE_MS) as usize;
                if let Some(c) = counts.get_mut(i) {
                    *c += n;
                }
            }
        }
        MinuteCounts { start, counts }
    }

    fn newest(&self) -> Millis {
        self.buckets.back().map_or(0, |(m, _)| *m)
    }

    fn window_start(&self, minute: Millis) -> Millis {
        minute.saturating_sub((self.minutes as Millis - 1) * MINUTE_MS)
    }

    fn prune(&mut self, minute: Millis) {
        let start = self.window_start(minute.max(self.newest()));
        while self.buckets.front().is_some_and(|(m, _)| *m < start) {
            self.buckets.pop_front();
        }
    }
}

fn minute_of(at: Millis) -> Millis {
    at - at % MINUTE_MS
}

/// Timestamped samples, oldest first, kept for at most `keep_ms` and at most `cap` of them
/// (e.g. queue depth over the last hour, the store's size at the last backups).
#[derive(Debug, Clone, PartialEq)]
pub struct Samples<T> {
    keep_ms: Millis,
    cap: usize,
    points: VecDeque<(Millis, T)>,
}

impl<T: Clone> Samples<T> {
    pub fn new(keep_ms: Millis, cap: usize) -> Self {
        Samples {
            keep_ms,
            cap: cap.max(1),
            points: VecDeque::new(),
        }
    }

    /// Record `value` taken at `at`, then drop what is too old or too many.
    pub fn push(&mut self, at: Millis, value: T) {
        self.points.push_back((at, value));
        while self.points.len() > self.cap {
            self.points.pop_front();
        }
        self.prune(at);
    }

    /// The samples no older than `keep_ms` at `now`, oldest first.
    pub fn since(&self, now: Millis) -> Vec<(Millis, T)> {
        let oldest = now.saturating_sub(self.keep_ms);
        self.points
            .iter()
            .filter(|(at, _)| *at >= oldest)
            .cloned()
            .collect()
    }

    /// The newest `n` values, oldest first.
    pub fn last(&self, n: usize) -> Vec<T> {
        let skip = self.points.len().saturating_sub(n);
        self.points
            .iter()
            .skip(skip)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn prune(&mut self, now: Millis) {
        let oldest = now.saturating_sub(self.keep_ms);
        while self.points.front().is_some_and(|(at, _)| *at < oldest) {
            self.points.pop_front();
        }
    }
}

/// What made the store's size worth a point on its chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMoment {
    Backup,
    Compaction,
}

impl StoreMoment {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreMoment::Backup => "backup",
            StoreMoment::Compaction => "compaction",
        }
    }
}

/// The store's footprint right after a backup or a compaction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StorePoint {
    pub moment: StoreMoment,
    pub size_on_disk: u64,
    pub live_bytes: u64,
    pub fragmentation_ratio: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE_MS;

    #[test]
    fn per_minute_counts_land_in_their_minute_and_the_window_ends_now() {
        let mut p = PerMinute::new(60);
        p.add(T0 + 1_000);
        p.add(T0 + 59_999);
        p.add(T0 + 60_000);
        let w = p.window(T0 + 2 * MINUTE_MS + 5);
        assert_eq!(w.counts.len(), 60);
        assert_eq!(w.start, T0 + 2 * MINUTE_MS - 59 * MINUTE_MS);
        assert_eq!(&w.counts[57..], &[2, 1, 0]);
        assert_eq!(w.counts.iter().sum::<u64>(), 3);
    }

    #[test]
    fn per_minute_forgets_minutes_that_left_the_window() {
        let mut p = PerMinute::new(60);
        p.add(T0);
        p.add(T0 + 59 * MINUTE_MS);
        assert_eq!(p.window(T0 + 59 * MINUTE_MS).counts.iter().sum::<u64>(), 2);
        assert_eq!(p.window(T0 + 60 * MINUTE_MS).counts.iter().sum::<u64>(), 1);
        p.add(T0 + 60 * MINUTE_MS);
        assert_eq!(
            p.buckets.len(),
            2,
            "the first minute is pruned on the next add"
        );
        assert_eq!(p.window(T0 + 200 * MINUTE_MS).counts, vec![0; 60]);
    }

    #[test]
    fn per_minute_takes_a_late_event_into_its_own_minute_and_drops_a_too_old_one() {
        let mut p = PerMinute::new(60);
        p.add(T0 + 10 * MINUTE_MS);
        p.add(T0 + 3 * MINUTE_MS);
        p.add(T0 + 10 * MINUTE_MS - 61 * MINUTE_MS);
        let w = p.window(T0 + 10 * MINUTE_MS);
        assert_eq!(w.counts[59], 1);
        assert_eq!(w.counts[52], 1);
        assert_eq!(w.counts.iter().sum::<u64>(), 2);
    }

    #[test]
    fn per_minute_window_near_the_epoch_does_not_underflow() {
        let mut p = PerMinute::new(60);
        p.add(5);
        let w = p.window(10);
        assert_eq!(w.start, 0);
        assert_eq!(w.counts[0], 1);
    }

    #[test]
    fn samples_keep_the_span_and_the_cap() {
        let mut s = Samples::new(3_600_000, 3);
        for i in 0..5u64 {
            s.push(T0 + i * MINUTE_MS, i);
        }
        assert_eq!(s.last(10), vec![2, 3, 4]);
        assert_eq!(s.last(2), vec![3, 4]);
        assert_eq!(
            s.since(T0 + 4 * MINUTE_MS),
            vec![
                (T0 + 2 * MINUTE_MS, 2),
                (T0 + 3 * MINUTE_MS, 3),
                (T0 + 4 * MINUTE_MS, 4)
            ]
        );
        assert_eq!(
            s.since(T0 + 4 * MINUTE_MS + 3_600_000),
            vec![(T0 + 4 * MINUTE_MS, 4)]
        );
        s.push(T0 + 5 * MINUTE_MS + 3_600_000, 9);
        assert_eq!(
            s.last(10),
            vec![9],
            "an hour-old sample is dropped on the next push"
        );
    }
}
