//! The task queue (reference §5.2): owns `task_queue` and `task_dead_letter`, keeps every
//! active task in memory, applies the transitions of [`agentcom_core::task`], answers only
//! once a change is durable, and publishes exactly one event per real transition (F3).
//! Every reclaim, failure and completion is told to the assignee's FSM (F9).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentcom_core::scheduler::{plan, Candidate};
use agentcom_core::task::{FailOutcome, NewTask, Task, TaskError, TaskStatus};
use agentcom_core::Millis;
use agentcom_store::{decode_or_skip, encode, StoreReader, Table, WriteOp};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;

use crate::agents::AgentTable;
use crate::events::{HubEvent, TaskEventKind, Topic};
use crate::pubsub::Publisher;
use crate::service::Service;
use crate::store::{write_then, InOrder, StoreMsg};
use crate::{now_ms, HubError};

pub type TaskResult<T> = Result<T, HubError>;

/// A task id: `task-` and 16 lowercase hex characters.
pub fn task_id() -> String {
    format!("task-{}", crate::services::message_id())
}

/// Which tasks a listing wants.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub priority: Option<u8>,
    pub assigned_to: Option<String>,
    /// Only tasks this agent submitted or is assigned (non-admin callers).
    pub involving: Option<String>,
}

/// `GET /api/tasks/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStats {
    pub by_status: Vec<(TaskStatus, usize)>,
    pub by_priority: Vec<(u8, usize)>,
    pub dead_letter: usize,
    pub queued: usize,
}

pub enum TaskMsg {
    Submit(NewTask, RpcReplyPort<TaskResult<Task>>),
    /// Submit a task (with this id) already assigned to an agent (admin push-task, F14).
    SubmitAssigned(String, NewTask, String, RpcReplyPort<TaskResult<Task>>),
    Assign(String, String, RpcReplyPort<TaskResult<Task>>),
    /// The assignee shows progress (`task_accepted`, `task_progress`): `updated_at` = now.
    Touch(String, String, RpcReplyPort<TaskResult<Task>>),
    Complete {
        task_id: String,
        agent_id: String,
        generation: u64,
        result: Value,
        tokens_used: Option<u64>,
        reply: RpcReplyPort<TaskResult<Task>>,
    },
    Fail {
        task_id: String,
        agent_id: String,
        generation: u64,
        error: Value,
        reply: RpcReplyPort<TaskResult<(Task, FailOutcome)>>,
    },
    /// Put an assigned task back in the queue; `from` limits it to that assignee.
    Reclaim {
        task_id: String,
        from: Option<String>,
        reason: String,
        reply: Option<RpcReplyPort<TaskResult<Task>>>,
    },
    RetryDeadLetter(String, RpcReplyPort<TaskResult<Task>>),
    Get(String, RpcReplyPort<Option<Task>>),
    List(TaskFilter, RpcReplyPort<Vec<Task>>),
    DeadLetters(RpcReplyPort<Vec<Task>>),
    Stats(RpcReplyPort<TaskStats>),
    /// One scheduler pass: (task, agent) pairs for these available agents, taking queued
    /// tasks in lane order and never making an excluded pair (rejections).
    Plan {
        agents: Vec<Candidate>,
        excluded: HashSet<(String, String)>,
        reply: RpcReplyPort<Vec<(String, String)>>,
    },
    /// Assigned tasks (for the stuck sweep and the dashboard's stuck-task condition).
    Assigned(RpcReplyPort<Vec<Task>>),
    /// Overdue reclaim and completed-task pruning.
    Sweep,
}

/// Task latencies for `/metrics`: time queued before assignment, and time from
/// assignment to completion.
#[derive(Default)]
pub struct TaskLatency {
    pub wait: std::sync::Mutex<agentcom_core::metrics::Histogram>,
    pub run: std::sync::Mutex<agentcom_core::metrics::Histogram>,
}

pub struct TaskQueueArgs {
    pub latency: Arc<TaskLatency>,
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
    pub publisher: Publisher,
    pub agents: Arc<AgentTable>,
    pub sweep_interval: Duration,
    pub completed_ttl: Duration,
}

pub struct TaskQueueState {
    order: InOrder,
    args: TaskQueueArgs,
    active: Tasks,
    dead: HashMap<String, Task>,
}

/// The tasks not in the dead letter, by id, with what the scheduler and the dashboard ask
/// of them every time kept up to date: the queued tasks in lane order (a pass reads only
/// the head of the queue), the counts by status and priority and the assigned tasks (kept
/// until a task changes): a hub with 100,000 tasks stored does not walk them all on every
/// pass or request. Every change goes through `get_mut`, `insert` or `remove`.
struct Tasks {
    by_id: HashMap<String, Task>,
    /// Queued tasks by (priority, created_at, id): lane order, FIFO inside a lane.
    queued: BTreeSet<LaneKey>,
    /// Tasks handed out by `get_mut` whose place in `queued` is not yet brought up to date.
    touched: Vec<String>,
    derived: Option<Derived>,
}

type LaneKey = (u8, Millis, String);

fn lane_key(task: &Task) -> LaneKey {
    let (priority, created_at, id) = task.lane();
    (priority, created_at, id.to_string())
}

struct Derived {
    /// By status (in `TaskStatus::ALL` order) and by priority.
    tally: ([usize; 4], [usize; 4]),
    assigned: Vec<Task>,
}

impl Tasks {
    fn new(by_id: HashMap<String, Task>) -> Tasks {
        let queued = by_id
            .values()
            .filter(|t| t.status == TaskStatus::Queued)
            .map(lane_key)
            .collect();
        Tasks {
            by_id,
            queued,
            touched: Vec::new(),
            derived: None,
        }
    }

    fn get(&self, id: &str) -> Option<&Task> {
        self.by_id.get(id)
    }

    fn values(&self) -> impl Iterator<Item = &Task> {
        self.by_id.values()
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.derived = None;
        self.touch(id);
        self.by_id.get_mut(id)
    }

    fn insert(&mut self, id: String, task: Task) {
        self.derived = None;
        self.touch(&id);
        self.by_id.insert(id, task);
    }

    /// Note that `id` may change (bringing `queued` up to date first if many are noted, so
    /// that what is noted stays bounded however long no pass reads the queue).
    fn touch(&mut self, id: &str) {
        if self.touched.len() >= 1024 {
            self.settle();
        }
        self.touched.push(id.to_string());
    }

    /// Bring `queued` up to date with every task noted by [`Tasks::touch`].
    fn settle(&mut self) {
        for id in std::mem::take(&mut self.touched) {
            if let Some(task) = self.by_id.get(&id) {
                let key = lane_key(task);
                if task.status == TaskStatus::Queued {
                    self.queued.insert(key);
                } else {
                    self.queued.remove(&key);
                }
            }
        }
    }

    fn remove(&mut self, id: &str) {
        self.derived = None;
        if let Some(task) = self.by_id.remove(id) {
            self.queued.remove(&lane_key(&task));
        }
    }

    /// The queued tasks, in lane order.
    fn queued(&mut self) -> impl Iterator<Item = &Task> {
        self.settle();
        let by_id = &self.by_id;
        self.queued.iter().filter_map(|(_, _, id)| by_id.get(id))
    }

    fn derived(&mut self) -> &Derived {
        let by_id = &self.by_id;
        self.derived.get_or_insert_with(|| Derived {
            tally: agentcom_core::task::tally(by_id.values()),
            assigned: by_id
                .values()
                .filter(|t| t.status == TaskStatus::Assigned)
                .cloned()
                .collect(),
        })
    }
}

pub struct TaskQueue;

/// Every task stored in `table`. Decoding is most of a restart's time (about 4 µs a task),
/// so a large table is decoded on two threads (the machine's other core, if it has one).
fn load(reader: &StoreReader, table: Table) -> Result<HashMap<String, Task>, ActorProcessingErr> {
    let records = reader.scan_prefix(table, b"")?;
    let decode = |records: &[agentcom_store::Record]| -> Vec<Task> {
        records
            .iter()
            .filter_map(|(key, bytes)| decode_or_skip::<Task>(table, key, bytes))
            .collect()
    };
    let tasks = if records.len() < 2_000 {
        decode(&records)
    } else {
        let (first, second) = records.split_at(records.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| decode(second));
            let mut tasks = decode(first);
            tasks.extend(
                other
                    .join()
                    .map_err(|_| "decoding the stored tasks failed")?,
            );
            Ok::<_, ActorProcessingErr>(tasks)
        })?
    };
    Ok(tasks.into_iter().map(|t| (t.id.clone(), t)).collect())
}

fn put(table: Table, task: &Task) -> WriteOp {
    WriteOp::Put {
        table,
        key: task.id.as_bytes().to_vec(),
        value: encode(task),
    }
}

fn delete(table: Table, id: &str) -> WriteOp {
    WriteOp::Delete {
        table,
        key: id.as_bytes().to_vec(),
    }
}

impl Actor for TaskQueue {
    type Msg = TaskMsg;
    type State = TaskQueueState;
    type Arguments = TaskQueueArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TaskQueueArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.store
            .call(StoreMsg::Barrier, crate::CALL_TIMEOUT)
            .await?;
        let active = Tasks::new(load(&args.reader, Table::TaskQueue)?);
        let dead = load(&args.reader, Table::TaskDeadLetter)?;
        myself.send_interval(args.sweep_interval, || TaskMsg::Sweep);
        Ok(TaskQueueState {
            order: InOrder::new(),
            args,
            active,
            dead,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        match msg {
            TaskMsg::Submit(new, reply) => {
                let task = Task::new(task_id(), new, now);
                state.active.insert(task.id.clone(), task.clone());
                state
                    .commit(
                        vec![put(Table::TaskQueue, &task)],
                        task,
                        &[TaskEventKind::Submitted],
                        None,
                        reply,
                    )
                    .await;
            }
            TaskMsg::SubmitAssigned(id, new, agent_id, reply) => {
                let mut task = Task::new(id, new, now);
                task.assign(&agent_id, now).expect("a new task is queued");
                state.active.insert(task.id.clone(), task.clone());
                let events = [TaskEventKind::Submitted, TaskEventKind::Assigned];
                state
                    .commit(
                        vec![put(Table::TaskQueue, &task)],
                        task,
                        &events,
                        None,
                        reply,
                    )
                    .await;
            }
            TaskMsg::Assign(id, agent_id, reply) => match state.active_mut(&id) {
                Err(e) => reply_err(reply, e),
                Ok(task) => match task.assign(&agent_id, now) {
                    Err(e) => reply_err(reply, e),
                    Ok(()) => {
                        let task = task.clone();
                        state
                            .commit(
                                vec![put(Table::TaskQueue, &task)],
                                task,
                                &[TaskEventKind::Assigned],
                                None,
                                reply,
                            )
                            .await;
                    }
                },
            },
            TaskMsg::Touch(id, agent_id, reply) => match state.active_mut(&id) {
                Err(e) => reply_err(reply, e),
                Ok(task) if task.is_assigned_to(&agent_id) => {
                    task.touch(now);
                    let task = task.clone();
                    state
                        .commit(vec![put(Table::TaskQueue, &task)], task, &[], None, reply)
                        .await;
                }
                Ok(task) => reply_err(
                    reply,
                    if task.status == TaskStatus::Assigned {
                        TaskError::NotAssignee
                    } else {
                        TaskError::InvalidState
                    },
                ),
            },
            TaskMsg::Complete {
                task_id,
                agent_id,
                generation,
                result,
                tokens_used,
                reply,
            } => match state.active_mut(&task_id) {
                Err(e) => reply_err(reply, e),
                Ok(task) => match task.complete(&agent_id, generation, result, tokens_used, now) {
                    Err(e) => reply_err(reply, e),
                    Ok(()) => {
                        let task = task.clone();
                        let release = Some(agent_id);
                        state
                            .commit(
                                vec![put(Table::TaskQueue, &task)],
                                task,
                                &[TaskEventKind::Completed],
                                release,
                                reply,
                            )
                            .await;
                    }
                },
            },
            TaskMsg::Fail {
                task_id,
                agent_id,
                generation,
                error,
                reply,
            } => match state.active_mut(&task_id) {
                Err(e) => reply_err(reply, e),
                Ok(task) => match task.fail(&agent_id, generation, error, now) {
                    Err(e) => reply_err(reply, e),
                    Ok(outcome) => {
                        let task = task.clone();
                        let (ops, event) = match outcome {
                            FailOutcome::Retried => {
                                (vec![put(Table::TaskQueue, &task)], TaskEventKind::Retried)
                            }
                            FailOutcome::DeadLetter => {
                                state.active.remove(&task.id);
                                state.dead.insert(task.id.clone(), task.clone());
                                (
                                    vec![
                                        delete(Table::TaskQueue, &task.id),
                                        put(Table::TaskDeadLetter, &task),
                                    ],
                                    TaskEventKind::DeadLetter,
                                )
                            }
                        };
                        let (tx, rx) = ractor::concurrency::oneshot();
                        state
                            .commit(ops, task, &[event], Some(agent_id), tx.into())
                            .await;
                        state.order.then(async move {
                            let interrupted =
                                crate::service::ServiceError::Interrupted("task_queue");
                            let result = rx.await.unwrap_or(Err(HubError::Service(interrupted)));
                            let _ = reply.send(result.map(|t| (t, outcome)));
                        });
                    }
                },
            },
            TaskMsg::Reclaim {
                task_id,
                from,
                reason,
                reply,
            } => {
                let result = match state.active_mut(&task_id) {
                    Err(e) => Err(e),
                    Ok(task) if from.as_deref().is_some_and(|a| !task.is_assigned_to(a)) => {
                        Err(TaskError::NotAssignee)
                    }
                    Ok(task) => {
                        let previous = task.assigned_to.clone();
                        task.reclaim(&reason, now)
                            .map(|()| (task.clone(), previous))
                    }
                };
                let reply = reply.unwrap_or_else(|| ractor::concurrency::oneshot().0.into());
                match result {
                    Err(e) => reply_err(reply, e),
                    Ok((task, previous)) => {
                        state
                            .commit(
                                vec![put(Table::TaskQueue, &task)],
                                task,
                                &[TaskEventKind::Reclaimed],
                                previous,
                                reply,
                            )
                            .await;
                    }
                }
            }
            TaskMsg::RetryDeadLetter(id, reply) => match state.dead.remove(&id) {
                None => reply_err(reply, TaskError::NotFound),
                Some(mut task) => {
                    task.retry_dead_letter(now)
                        .expect("a dead-letter task can be retried");
                    state.active.insert(task.id.clone(), task.clone());
                    let ops = vec![
                        delete(Table::TaskDeadLetter, &task.id),
                        put(Table::TaskQueue, &task),
                    ];
                    state
                        .commit(ops, task, &[TaskEventKind::Retried], None, reply)
                        .await;
                }
            },
            TaskMsg::Get(id, reply) => {
                let _ = reply.send(
                    state
                        .active
                        .get(&id)
                        .or_else(|| state.dead.get(&id))
                        .cloned(),
                );
            }
            TaskMsg::List(filter, reply) => {
                let mut tasks: Vec<Task> = state
                    .active
                    .values()
                    .filter(|t| filter.accepts(t))
                    .cloned()
                    .collect();
                sort(&mut tasks);
                let _ = reply.send(tasks);
            }
            TaskMsg::DeadLetters(reply) => {
                let mut tasks: Vec<Task> = state.dead.values().cloned().collect();
                sort(&mut tasks);
                let _ = reply.send(tasks);
            }
            TaskMsg::Stats(reply) => {
                let mut stats = TaskStats {
                    dead_letter: state.dead.len(),
                    ..TaskStats::default()
                };
                let (by_status, by_priority) = state.active.derived().tally;
                for (status, n) in TaskStatus::ALL.into_iter().zip(by_status) {
                    if n > 0 {
                        stats.by_status.push((status, n));
                    }
                }
                for (p, n) in (0..4u8).zip(by_priority) {
                    if n > 0 {
                        stats.by_priority.push((p, n));
                    }
                }
                stats.queued = by_status[0];
                let _ = reply.send(stats);
            }
            TaskMsg::Plan {
                agents,
                excluded,
                reply,
            } => {
                let pairs = plan(&agents, state.active.queued(), |t, a| {
                    excluded.contains(&(t.to_string(), a.to_string()))
                });
                let _ = reply.send(pairs);
            }
            TaskMsg::Assigned(reply) => {
                let _ = reply.send(state.active.derived().assigned.clone());
            }
            TaskMsg::Sweep => {
                let overdue: Vec<String> = state
                    .active
                    .values()
                    .filter(|t| t.is_overdue(now))
                    .map(|t| t.id.clone())
                    .collect();
                for task_id in overdue {
                    let _ = myself.send_message(TaskMsg::Reclaim {
                        task_id,
                        from: None,
                        reason: "overdue".into(),
                        reply: None,
                    });
                }
                // F20: completed tasks are kept for `completed_task_ttl`, then pruned.
                let cutoff = now.saturating_sub(state.args.completed_ttl.as_millis() as u64);
                let expired: Vec<String> = state
                    .active
                    .values()
                    .filter(|t| t.status == TaskStatus::Completed && t.updated_at < cutoff)
                    .map(|t| t.id.clone())
                    .collect();
                if !expired.is_empty() {
                    let ops = expired
                        .iter()
                        .map(|id| delete(Table::TaskQueue, id))
                        .collect();
                    for id in &expired {
                        state.active.remove(id);
                    }
                    let (tx, _) = ractor::concurrency::oneshot();
                    write_then(&state.args.store, &state.order, ops, tx.into(), || ()).await;
                }
            }
        }
        Ok(())
    }
}

fn reply_err<T>(reply: RpcReplyPort<TaskResult<T>>, e: TaskError) {
    let _ = reply.send(Err(HubError::Task(e)));
}

/// Active tasks in lane order, FIFO inside a lane.
fn sort(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| a.lane().cmp(&b.lane()));
}

impl TaskFilter {
    fn accepts(&self, t: &Task) -> bool {
        self.status.is_none_or(|s| t.status == s)
            && self.priority.is_none_or(|p| t.priority == p)
            && self
                .assigned_to
                .as_deref()
                .is_none_or(|a| t.assigned_to.as_deref() == Some(a))
            && self
                .involving
                .as_deref()
                .is_none_or(|a| t.submitted_by == a || t.assigned_to.as_deref() == Some(a))
    }
}

impl TaskQueueState {
    fn active_mut(&mut self, id: &str) -> Result<&mut Task, TaskError> {
        self.active.get_mut(id).ok_or(TaskError::NotFound)
    }

    /// Make `ops` durable, then publish `events` for `task`, tell `release`'s FSM that the
    /// task left it, and answer with the task. `task` is a copy of what the queue now
    /// holds: every caller has changed the task in place (`active_mut`), inserted it, or
    /// moved it to the dead letter first.
    async fn commit(
        &mut self,
        ops: Vec<WriteOp>,
        task: Task,
        events: &[TaskEventKind],
        release: Option<String>,
        reply: RpcReplyPort<TaskResult<Task>>,
    ) {
        let publisher = self.args.publisher.clone();
        let agents = self.args.agents.clone();
        let events = events.to_vec();
        let latency = self.args.latency.clone();
        write_then(&self.args.store, &self.order, ops, reply, move || {
            // A shared copy for the events, when there are any (a touch has none).
            let shared = (!events.is_empty()).then(|| Arc::new(task.clone()));
            for (event, shared) in events.into_iter().zip(shared.iter().cycle()) {
                match (event, task.assigned_at) {
                    (TaskEventKind::Assigned, Some(at)) => latency
                        .wait
                        .lock()
                        .expect("latency lock")
                        .observe(at.saturating_sub(task.created_at)),
                    (TaskEventKind::Completed, Some(at)) => latency
                        .run
                        .lock()
                        .expect("latency lock")
                        .observe(now_ms().saturating_sub(at)),
                    _ => {}
                }
                publisher.publish(
                    Topic::Tasks,
                    HubEvent::Task {
                        kind: event,
                        task: shared.clone(),
                    },
                );
            }
            if let Some(agent_id) = release {
                agents.released(&agent_id, &task.id);
            }
            task
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Task {
        task_at(id, 2, 0)
    }

    fn task_at(id: &str, priority: u8, created_at: u64) -> Task {
        let new = NewTask {
            description: "d".into(),
            metadata: serde_json::json!({}),
            priority,
            max_retries: 1,
            needed_capabilities: Vec::new(),
            complete_by: None,
            submitted_by: "admin".into(),
        };
        Task::new(id.into(), new, created_at)
    }

    fn queued_ids(tasks: &mut Tasks) -> Vec<String> {
        tasks.queued().map(|t| t.id.clone()).collect()
    }

    /// The queue in lane order follows every change made through the set, however many
    /// changes come between two reads.
    #[test]
    fn the_queue_in_lane_order_follows_every_change() {
        let mut tasks = Tasks::new(HashMap::from([
            ("late".to_string(), task_at("late", 2, 9)),
            ("urgent".to_string(), task_at("urgent", 0, 10)),
        ]));
        tasks.insert("early".into(), task_at("early", 2, 1));
        assert_eq!(queued_ids(&mut tasks), ["urgent", "early", "late"]);
        tasks
            .get_mut("urgent")
            .unwrap()
            .assign("agent", 11)
            .unwrap();
        assert_eq!(queued_ids(&mut tasks), ["early", "late"]);
        tasks
            .get_mut("urgent")
            .unwrap()
            .reclaim("test", 12)
            .unwrap();
        tasks.remove("late");
        assert_eq!(queued_ids(&mut tasks), ["urgent", "early"]);
        for n in 0..3000 {
            let id = format!("t{n:04}");
            tasks.insert(id.clone(), task_at(&id, 3, n));
            tasks.get_mut(&id).unwrap().assign("agent", n).unwrap();
        }
        assert!(tasks.touched.len() <= 1024, "what is noted stays bounded");
        assert_eq!(queued_ids(&mut tasks), ["urgent", "early"]);
    }

    /// What is kept of the tasks follows every change made through the set.
    #[test]
    fn kept_counts_and_assigned_tasks_follow_every_change() {
        let mut tasks = Tasks::new(HashMap::new());
        tasks.insert("a".into(), task("a"));
        tasks.insert("b".into(), task("b"));
        assert_eq!(tasks.derived().tally.0, [2, 0, 0, 0]);
        assert!(tasks.derived().assigned.is_empty());
        tasks.get_mut("a").unwrap().assign("agent", 1).unwrap();
        assert_eq!(tasks.derived().tally.0, [1, 1, 0, 0]);
        assert_eq!(tasks.derived().assigned[0].id, "a");
        tasks.remove("b");
        assert_eq!(tasks.derived().tally, ([0, 1, 0, 0], [0, 0, 1, 0]));
        let fresh = agentcom_core::task::tally(tasks.values());
        assert_eq!(tasks.derived().tally, fresh);
    }
}
