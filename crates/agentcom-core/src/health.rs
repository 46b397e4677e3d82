//! Storage health rules (the seed's `dets-health`, with F1 fixed).

use crate::Millis;

/// Wasted share of the store's footprint: `1 − live / on_disk` (0 for an empty file).
/// The original computed `1 − used/max` over DETS slots, which read ~1.0 always (F1).
pub fn fragmentation_ratio(size_on_disk: u64, live_bytes: u64) -> f64 {
    if size_on_disk == 0 {
        return 0.0;
    }
    let ratio = 1.0 - live_bytes as f64 / size_on_disk as f64;
    (ratio.clamp(0.0, 1.0) * 1000.0).round() / 1000.0
}

/// High only when over half the footprint is wasted **and** the waste exceeds `floor`
/// bytes, so a small fresh store never reads as fragmented.
pub fn high_fragmentation(size_on_disk: u64, live_bytes: u64, floor: u64) -> bool {
    fragmentation_ratio(size_on_disk, live_bytes) > 0.5
        && size_on_disk.saturating_sub(live_bytes) > floor
}

/// Stale when there never was a backup or the last one is older than `stale_after_ms`.
pub fn stale_backup(last_backup_at: Option<Millis>, now: Millis, stale_after_ms: u64) -> bool {
    last_backup_at.is_none_or(|t| now.saturating_sub(t) > stale_after_ms)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Healthy,
    Warning,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Warning => "warning",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// The seed's rule: unhealthy if both flags hold, warning if one does. Records moved to
/// quarantine (they could not be read back) are a warning too.
pub fn health_status(
    stale_backup: bool,
    high_fragmentation: bool,
    quarantined: bool,
) -> HealthStatus {
    match (stale_backup, high_fragmentation) {
        (true, true) => HealthStatus::Unhealthy,
        (false, false) if !quarantined => HealthStatus::Healthy,
        _ => HealthStatus::Warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn fragmentation_needs_both_a_ratio_and_a_floor() {
        assert_eq!(fragmentation_ratio(0, 0), 0.0);
        assert_eq!(fragmentation_ratio(1000, 250), 0.75);
        assert_eq!(fragmentation_ratio(100, 200), 0.0);
        // A fresh store: a few MiB of preallocated segments, a few KiB live.
        assert!(!high_fragmentation(4 * MIB, 10_000, 64 * MIB));
        assert!(high_fragmentation(400 * MIB, 100 * MIB, 64 * MIB));
        assert!(!high_fragmentation(400 * MIB, 300 * MIB, 64 * MIB));
    }

    #[test]
    fn staleness_and_status() {
        assert!(stale_backup(None, 10, 5));
        assert!(stale_backup(Some(1), 10, 5));
        assert!(!stale_backup(Some(6), 10, 5));
        assert_eq!(health_status(false, false, false), HealthStatus::Healthy);
        assert_eq!(health_status(true, false, false), HealthStatus::Warning);
        assert_eq!(health_status(false, true, false), HealthStatus::Warning);
        assert_eq!(health_status(false, false, true), HealthStatus::Warning);
        assert_eq!(health_status(true, true, false), HealthStatus::Unhealthy);
    }
}
