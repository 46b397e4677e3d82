//! The dashboard's health heuristics (reference §7.5, with the seed's storage conditions
//! and two more: a failed or unverified last backup, an actor restarting repeatedly).

use crate::Millis;

/// Everything the heuristics look at, gathered by the dashboard-state actor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthInputs {
    pub now: Millis,
    /// Agents seen recently that are not connected now.
    pub offline_agents: Vec<String>,
    /// The last queued-count samples, oldest first.
    pub queue_samples: Vec<u64>,
    pub completed_this_hour: u64,
    pub failed_this_hour: u64,
    /// Assigned tasks not updated for longer than the stuck threshold.
    pub stuck_tasks: Vec<String>,
    /// `None` when the storage report could not be had (the conditions are skipped).
    pub storage: Option<StorageInputs>,
    /// Actors on a crash streak of three or more: (name, streak).
    pub looping_actors: Vec<(String, u32)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageInputs {
    pub last_backup_at: Option<Millis>,
    pub stale_after_ms: u64,
    pub high_fragmentation: bool,
    pub wasted_bytes: u64,
    /// The latest run failed (its error) …
    pub last_run_error: Option<String>,
    /// … or wrote a backup that did not verify (its id).
    pub last_run_unverified: Option<String>,
    /// Records moved to quarantine because they could not be read back.
    pub quarantined_records: u64,
}

/// Ordered by severity: `Ok < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

/// The conditions, in the original's order, and the overall status: critical when the
/// failure rate is high, warning when any condition holds, ok otherwise.
pub fn compute_health(i: &HealthInputs) -> (Status, Vec<String>) {
    let mut conditions = Vec::new();
    let mut critical = false;
    if !i.offline_agents.is_empty() {
        conditions.push(format!("Agent offline: {}", i.offline_agents.join(", ")));
    }
    if let [.., a, b, c] = i.queue_samples.as_slice() {
        if a < b && b < c {
            conditions.push(format!("Queue growing: {a} -> {b} -> {c}"));
        }
    }
    let total = i.completed_this_hour + i.failed_this_hour;
    if total > 0 && i.failed_this_hour * 2 > total {
        critical = true;
        conditions.push(format!(
            "High failure rate: {}/{} tasks failed this hour",
            i.failed_this_hour, total
        ));
    }
    if !i.stuck_tasks.is_empty() {
        conditions.push(format!("Stuck tasks: {}", i.stuck_tasks.join(", ")));
    }
    if let Some(s) = &i.storage {
        match s.last_backup_at {
            None => conditions.push("DETS backup: never run".to_string()),
            Some(t) if i.now.saturating_sub(t) > s.stale_after_ms => {
                conditions.push(format!(
                    "DETS backup stale: last backup {}h ago",
                    i.now.saturating_sub(t) / 3_600_000
                ));
            }
            Some(_) => {}
        }
        if s.high_fragmentation {
            conditions.push(format!(
                "DETS fragmentation >50%: store ({} MiB wasted)",
                s.wasted_bytes >> 20
            ));
        }
        if let Some(error) = &s.last_run_error {
            conditions.push(format!("Last backup failed: {error}"));
        } else if let Some(id) = &s.last_run_unverified {
            conditions.push(format!("Last backup not verified: {id}"));
        }
        if s.quarantined_records > 0 {
            conditions.push(format!(
                "Quarantined records: {} could not be read back (see the quarantine table)",
                s.quarantined_records
            ));
        }
    }
    for (name, streak) in &i.looping_actors {
        conditions.push(format!(
            "Actor restarting repeatedly: {name} ({streak} crashes in a row)"
        ));
    }
    let status = if critical {
        Status::Critical
    } else if conditions.is_empty() {
        Status::Ok
    } else {
        Status::Warning
    };
    (status, conditions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_storage() -> StorageInputs {
        StorageInputs {
            last_backup_at: Some(1_000),
            stale_after_ms: 48 * 3_600_000,
            ..StorageInputs::default()
        }
    }

    #[test]
    fn statuses_order_by_severity() {
        assert!(Status::Ok < Status::Warning && Status::Warning < Status::Critical);
    }

    #[test]
    fn a_quiet_hub_with_a_fresh_backup_is_ok() {
        let i = HealthInputs {
            now: 2_000,
            storage: Some(healthy_storage()),
            ..HealthInputs::default()
        };
        assert_eq!(compute_health(&i), (Status::Ok, vec![]));
    }

    #[test]
    fn every_condition_has_the_originals_text() {
        let i = HealthInputs {
            now: 50 * 3_600_000,
            offline_agents: vec!["a".into(), "b".into()],
            queue_samples: vec![9, 1, 2, 3],
            completed_this_hour: 1,
            failed_this_hour: 3,
            stuck_tasks: vec!["task-1".into()],
            storage: Some(StorageInputs {
                last_backup_at: Some(0),
                stale_after_ms: 48 * 3_600_000,
                high_fragmentation: true,
                wasted_bytes: 100 << 20,
                last_run_error: Some("disk full".into()),
                last_run_unverified: None,
                quarantined_records: 2,
            }),
            looping_actors: vec![("config".into(), 4)],
        };
        let (status, conditions) = compute_health(&i);
        assert_eq!(status, Status::Critical);
        assert_eq!(
            conditions,
            vec![
                "Agent offline: a, b",
                "Queue growing: 1 -> 2 -> 3",
                "High failure rate: 3/4 tasks failed this hour",
                "Stuck tasks: task-1",
                "DETS backup stale: last backup 50h ago",
                "DETS fragmentation >50%: store (100 MiB wasted)",
                "Last backup failed: disk full",
                "Quarantined records: 2 could not be read back (see the quarantine table)",
                "Actor restarting repeatedly: config (4 crashes in a row)",
            ]
        );
    }

    #[test]
    fn never_backed_up_and_unknown_storage() {
        let never = HealthInputs {
            storage: Some(StorageInputs::default()),
            ..HealthInputs::default()
        };
        assert_eq!(
            compute_health(&never),
            (Status::Warning, vec!["DETS backup: never run".to_string()])
        );
        let unknown = HealthInputs::default();
        assert_eq!(
            compute_health(&unknown).0,
            Status::Ok,
            "no storage report: its conditions are skipped"
        );
        let flat = HealthInputs {
            queue_samples: vec![1, 1, 2],
            ..HealthInputs::default()
        };
        assert_eq!(compute_health(&flat).0, Status::Ok);
    }
}
