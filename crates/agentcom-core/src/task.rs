//! The task state machine (reference §5.1–5.2): a task's record and every transition, as
//! plain functions over plain data. The task-queue actor performs the IO they decide on.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Millis;

/// History entries kept per task (newest first).
pub const HISTORY_KEEP: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Assigned,
    Completed,
    DeadLetter,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 4] = [
        TaskStatus::Queued,
        TaskStatus::Assigned,
        TaskStatus::Completed,
        TaskStatus::DeadLetter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Assigned => "assigned",
            TaskStatus::Completed => "completed",
            TaskStatus::DeadLetter => "dead_letter",
        }
    }

    pub fn from_name(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Priority lanes: 0 urgent, 1 high, 2 normal, 3 low.
pub const PRIORITY_NAMES: [&str; 4] = ["urgent", "high", "normal", "low"];
pub const DEFAULT_PRIORITY: u8 = 2;
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// A priority given by name. `critical`, which the original's `agentcom-submit.js` offers,
/// is `urgent`: what the person typing it means.
pub fn parse_priority_name(name: &str) -> Option<u8> {
    if name == "critical" {
        return Some(0);
    }
    PRIORITY_NAMES
        .iter()
        .position(|p| *p == name)
        .map(|i| i as u8)
}

/// One entry of a task's history: `{"event","timestamp","details"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub event: String,
    pub timestamp: Millis,
    pub details: Value,
}

/// A task record, stored as is (the original's `TaskJSON` fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub description: String,
    pub metadata: Value,
    pub priority: u8,
    pub status: TaskStatus,
    pub assigned_to: Option<String>,
    pub assigned_at: Option<Millis>,
    pub generation: u64,
    pub retry_count: u32,
    pub max_retries: u32,
    pub needed_capabilities: Vec<String>,
    pub last_error: Option<Value>,
    pub complete_by: Option<Millis>,
    pub result: Option<Value>,
    pub tokens_used: Option<u64>,
    pub submitted_by: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Newest first, at most [`HISTORY_KEEP`].
    pub history: Vec<TaskEvent>,
}

/// A validated submission.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub description: String,
    pub metadata: Value,
    pub priority: u8,
    pub max_retries: u32,
    pub needed_capabilities: Vec<String>,
    pub complete_by: Option<Millis>,
    pub submitted_by: String,
}

/// Why a transition was refused. The names are the wire's (`task_complete_failed: …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("not_found")]
    NotFound,
    #[error("stale_generation")]
    StaleGeneration,
    #[error("invalid_state")]
    InvalidState,
    #[error("not_assigned")]
    NotAssigned,
    /// Only the assignee may act on an assigned task (S5).
    #[error("not_assignee")]
    NotAssignee,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    Retried,
    DeadLetter,
}

impl Task {
    /// Where the task stands in the queue: lanes by priority, FIFO inside a lane (the id
    /// breaks ties). Both fields are fixed when the task is created.
    pub fn lane(&self) -> (u8, Millis, &str) {
        (self.priority, self.created_at, &self.id)
    }

    pub fn new(id: String, t: NewTask, now: Millis) -> Task {
        let mut task = Task {
            id,
            description: t.description,
            metadata: t.metadata,
            priority: t.priority,
            status: TaskStatus::Queued,
            assigned_to: None,
            assigned_at: None,
            generation: 0,
            retry_count: 0,
            max_retries: t.max_retries,
            needed_capabilities: t.needed_capabilities,
            last_error: None,
            complete_by: t.complete_by,
            result: None,
            tokens_used: None,
            submitted_by: t.submitted_by,
            created_at: now,
            updated_at: now,
            history: Vec::new(),
        };
        task.record("queued", Value::from("submitted"), now);
        task
    }

    fn record(&mut self, event: &str, details: Value, now: Millis) {
        self.history.insert(
            0,
            TaskEvent {
                event: event.to_string(),
                timestamp: now,
                details,
            },
        );
        self.history.truncate(HISTORY_KEEP);
        self.updated_at = now;
    }

    /// Is `agent_id` the task's current assignee?
    pub fn is_assigned_to(&self, agent_id: &str) -> bool {
        self.status == TaskStatus::Assigned && self.assigned_to.as_deref() == Some(agent_id)
    }

    /// queued → assigned, generation + 1.
    pub fn assign(&mut self, agent_id: &str, now: Millis) -> Result<(), TaskError> {
        if self.status != TaskStatus::Queued {
            return Err(TaskError::InvalidState);
        }
        self.status = TaskStatus::Assigned;
        self.assigned_to = Some(agent_id.to_string());
        self.assigned_at = Some(now);
        self.generation += 1;
        let details = serde_json::json!({"agent_id": agent_id, "generation": self.generation});
        self.record("assigned", details, now);
        Ok(())
    }

    /// Check that `agent_id` may finish this assignment at `generation`.
    fn check_finish(&self, agent_id: &str, generation: u64) -> Result<(), TaskError> {
        match self.status {
            TaskStatus::Assigned if self.assigned_to.as_deref() != Some(agent_id) => {
                Err(TaskError::NotAssignee)
            }
            TaskStatus::Assigned if self.generation != generation => {
                Err(TaskError::StaleGeneration)
            }
            TaskStatus::Assigned => Ok(()),
            TaskStatus::DeadLetter => Err(TaskError::NotFound),
            _ => Err(TaskError::InvalidState),
        }
    }

    /// assigned → completed, by the assignee at the current generation.
    pub fn complete(
        &mut self,
        agent_id: &str,
        generation: u64,
        result: Value,
        tokens_used: Option<u64>,
        now: Millis,
    ) -> Result<(), TaskError> {
        self.check_finish(agent_id, generation)?;
        self.status = TaskStatus::Completed;
        self.result = Some(result);
        self.tokens_used = tokens_used;
        self.record(
            "completed",
            serde_json::json!({"tokens_used": tokens_used}),
            now,
        );
        Ok(())
    }

    /// assigned → queued (retry) or dead_letter once `retry_count + 1 ≥ max_retries`.
    pub fn fail(
        &mut self,
        agent_id: &str,
        generation: u64,
        error: Value,
        now: Millis,
    ) -> Result<FailOutcome, TaskError> {
        self.check_finish(agent_id, generation)?;
        self.retry_count += 1;
        self.last_error = Some(error.clone());
        if self.retry_count >= self.max_retries {
            self.status = TaskStatus::DeadLetter;
            self.record("dead_letter", error, now);
            Ok(FailOutcome::DeadLetter)
        } else {
            self.requeue();
            self.record("retry", error, now);
            Ok(FailOutcome::Retried)
        }
    }

    fn requeue(&mut self) {
        self.status = TaskStatus::Queued;
        self.assigned_to = None;
        self.assigned_at = None;
        self.generation += 1;
    }

    /// assigned → queued, generation + 1 (disconnect, timeout, rejection, overdue, stuck).
    pub fn reclaim(&mut self, reason: &str, now: Millis) -> Result<(), TaskError> {
        if self.status != TaskStatus::Assigned {
            return Err(TaskError::NotAssigned);
        }
        self.requeue();
        self.record("reclaimed", Value::from(reason), now);
        Ok(())
    }

    /// dead_letter → queued with a fresh retry budget.
    pub fn retry_dead_letter(&mut self, now: Millis) -> Result<(), TaskError> {
        if self.status != TaskStatus::DeadLetter {
            return Err(TaskError::NotFound);
        }
        self.requeue();
        self.retry_count = 0;
        self.last_error = None;
        self.record("queued", Value::from("retried from dead-letter"), now);
        Ok(())
    }

    /// A sign of progress from the assignee: `updated_at` = now (no history entry).
    pub fn touch(&mut self, now: Millis) {
        self.updated_at = now;
    }

    /// Is the task past its `complete_by` deadline while assigned?
    pub fn is_overdue(&self, now: Millis) -> bool {
        self.status == TaskStatus::Assigned && self.complete_by.is_some_and(|t| t < now)
    }
}

/// Tasks counted by status (in [`TaskStatus::ALL`] order) and by priority (0 to 3), in one
/// pass: the stats and the dashboard ask for both on every call, over every task kept.
pub fn tally<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> ([usize; 4], [usize; 4]) {
    let (mut by_status, mut by_priority) = ([0; 4], [0; 4]);
    for t in tasks {
        if let Some(i) = TaskStatus::ALL.iter().position(|s| *s == t.status) {
            by_status[i] += 1;
        }
        if let Some(n) = by_priority.get_mut(t.priority as usize) {
            *n += 1;
        }
    }
    (by_status, by_priority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tally_counts_statuses_and_priorities_in_one_pass() {
        let mut tasks: Vec<Task> = (0..5).map(|_| new_task(1)).collect();
        tasks[1].priority = 0;
        tasks[2].assign("a", 1).unwrap();
        tasks[3].status = TaskStatus::Completed;
        tasks[4].priority = 3;
        let (by_status, by_priority) = tally(&tasks);
        assert_eq!(by_status, [3, 1, 1, 0]);
        assert_eq!(by_priority, [1, 0, 3, 1]);
        assert_eq!(by_priority.iter().sum::<usize>(), tasks.len());
    }

    fn new_task(max_retries: u32) -> Task {
        let t = NewTask {
            description: "d".into(),
            metadata: serde_json::json!({}),
            priority: DEFAULT_PRIORITY,
            max_retries,
            needed_capabilities: vec![],
            complete_by: None,
            submitted_by: "s".into(),
        };
        Task::new("task-0000000000000000".into(), t, 1)
    }

    #[test]
    fn happy_path_and_fencing() {
        let mut t = new_task(3);
        assert_eq!(
            (t.status, t.generation, t.history.len()),
            (TaskStatus::Queued, 0, 1)
        );
        t.assign("a", 2).unwrap();
        assert_eq!((t.status, t.generation), (TaskStatus::Assigned, 1));
        assert_eq!(t.assign("b", 3), Err(TaskError::InvalidState));
        assert_eq!(
            t.complete("a", 0, Value::Null, None, 3),
            Err(TaskError::StaleGeneration)
        );
        assert_eq!(
            t.complete("b", 1, Value::Null, None, 3),
            Err(TaskError::NotAssignee)
        );
        t.complete("a", 1, serde_json::json!({"ok": true}), Some(7), 4)
            .unwrap();
        assert_eq!((t.status, t.tokens_used), (TaskStatus::Completed, Some(7)));
        assert_eq!(
            t.complete("a", 1, Value::Null, None, 5),
            Err(TaskError::InvalidState)
        );
        let events: Vec<&str> = t.history.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, vec!["completed", "assigned", "queued"]);
    }

    #[test]
    fn retries_then_dead_letter_with_the_originals_arithmetic() {
        let mut t = new_task(2);
        t.assign("a", 1).unwrap();
        assert_eq!(t.fail("a", 1, "e1".into(), 2), Ok(FailOutcome::Retried));
        assert_eq!(
            (t.status, t.generation, t.retry_count),
            (TaskStatus::Queued, 2, 1)
        );
        assert_eq!(t.assigned_to, None);
        t.assign("a", 3).unwrap();
        assert_eq!(t.generation, 3);
        assert_eq!(t.fail("a", 3, "e2".into(), 4), Ok(FailOutcome::DeadLetter));
        assert_eq!(
            (t.status, t.retry_count, t.last_error.clone()),
            (TaskStatus::DeadLetter, 2, Some("e2".into()))
        );
        t.retry_dead_letter(5).unwrap();
        assert_eq!(
            (t.status, t.retry_count, t.generation, t.last_error.clone()),
            (TaskStatus::Queued, 0, 4, None)
        );
        let mut one = new_task(1);
        one.assign("a", 1).unwrap();
        assert_eq!(one.fail("a", 1, "x".into(), 2), Ok(FailOutcome::DeadLetter));
    }

    #[test]
    fn reclaim_and_history_cap() {
        let mut t = new_task(3);
        assert_eq!(t.reclaim("overdue", 1), Err(TaskError::NotAssigned));
        for i in 0..40 {
            t.assign("a", i).unwrap();
            t.reclaim("agent_disconnect", i).unwrap();
        }
        assert_eq!(t.history.len(), HISTORY_KEEP);
        assert_eq!(t.generation, 80);
        assert_eq!(t.history[0].event, "reclaimed");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Assign(u8),
        Complete(u8, bool),
        Fail(u8, bool),
        Reclaim,
        Retry,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3).prop_map(Op::Assign),
            (0u8..3, any::<bool>()).prop_map(|(a, g)| Op::Complete(a, g)),
            (0u8..3, any::<bool>()).prop_map(|(a, g)| Op::Fail(a, g)),
            Just(Op::Reclaim),
            Just(Op::Retry),
        ]
    }

    proptest! {
        /// Whatever happens, generations only grow, a completed task never changes again,
        /// and only the assignee at the current generation finishes a task.
        #[test]
        fn transitions_keep_their_invariants(ops in proptest::collection::vec(op(), 0..60), max_retries in 0u32..4) {
            let mut t = new_task(max_retries);
            for (now, op) in ops.into_iter().enumerate() {
                let before = t.clone();
                let agent = |a: u8| format!("agent-{a}");
                let result = match op {
                    Op::Assign(a) => t.assign(&agent(a), now as u64).map(|_| ()),
                    Op::Complete(a, g) => {
                        let gen = if g { t.generation } else { t.generation + 1 };
                        t.complete(&agent(a), gen, Value::Null, None, now as u64)
                    }
                    Op::Fail(a, g) => {
                        let gen = if g { t.generation } else { t.generation + 1 };
                        t.fail(&agent(a), gen, Value::Null, now as u64).map(|_| ())
                    }
                    Op::Reclaim => t.reclaim("x", now as u64),
                    Op::Retry => t.retry_dead_letter(now as u64),
                };
                prop_assert!(t.generation >= before.generation);
                if result.is_err() {
                    prop_assert_eq!(&t, &before, "a refused transition changes nothing");
                }
                if before.status == TaskStatus::Completed {
                    prop_assert_eq!(&t, &before);
                }
                if t.status == TaskStatus::Completed && before.status != TaskStatus::Completed {
                    prop_assert_eq!(before.status, TaskStatus::Assigned);
                    prop_assert_eq!(t.assigned_to.clone(), before.assigned_to.clone());
                }
                prop_assert!(t.history.len() <= HISTORY_KEEP);
                if t.status == TaskStatus::Assigned {
                    prop_assert!(t.assigned_to.is_some());
                }
                if t.status == TaskStatus::Queued {
                    prop_assert!(t.assigned_to.is_none());
                }
            }
        }
    }
}
