//! Dashboard state (reference §4.4, §7.5): hourly throughput, recent completions, queue
//! samples and agent sightings, fed by the `tasks`, `presence` and `actors` topics; and
//! the snapshot the dashboard shows, gathered from every part with a short deadline so
//! that a slow or restarting part leaves its own section empty instead of failing the
//! snapshot (F23). Counts come from the queue's own events, once each (F3).
//!
//! It also keeps the trend series the dashboard charts (completions per minute and queue
//! depth over the last hour, the store's footprint after the last backups and
//! compactions), so that a page loaded at any moment draws them at once. They live in
//! memory: a restarted hub starts them afresh.
//!
//! Snapshots are built once for every request waiting: a request that arrives while one
//! is being built waits for the next, so no answer predates its request, and many
//! dashboards (or `GET /api/dashboard/state` callers) cost one build and one rendering.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agentcom_core::dashboard::{compute_health, HealthInputs, Status, StorageInputs};
use agentcom_core::task::{Task, TaskStatus};
use agentcom_core::trends::{MinuteCounts, PerMinute, Samples, StoreMoment, StorePoint};
use agentcom_core::Millis;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::agents::AgentView;
use crate::backup::StorageHealth;
use crate::events::{HubEvent, TaskEventKind, Topic};
use crate::now_ms;
use crate::pubsub::Subscribed;
use crate::services::Services;
use crate::supervisor::ChildRecord;
use crate::task_queue::{TaskMsg, TaskStats};

/// Completions kept for the dashboard.
const RECENT_KEEP: usize = 100;
/// How long a part of the snapshot may take before it is left out.
const PART_DEADLINE: Duration = Duration::from_secs(1);
/// An agent that left is reported offline for this long.
const OFFLINE_MEMORY_MS: Millis = 3_600_000;
/// The span of the throughput and queue-depth charts.
const TREND_SPAN_MS: Millis = 3_600_000;
/// Queue-depth samples kept (one per `queue_sample_interval`, 60 s by default).
const QUEUE_SAMPLES_KEPT: usize = 120;
/// Points of the store chart: the last backups and compactions.
const STORE_POINTS_KEPT: usize = 24;

#[derive(Debug, Clone)]
pub struct Completion {
    pub task_id: String,
    pub agent_id: Option<String>,
    pub description: String,
    pub duration_ms: u64,
    pub tokens_used: Option<u64>,
    pub completed_at: Millis,
}

#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub completed_last_hour: u64,
    pub avg_completion_ms: u64,
    pub total_tokens_hour: u64,
}

/// The series behind the dashboard's charts.
#[derive(Debug, Clone)]
pub struct Trends {
    /// Tasks completed per minute over the last hour, the current minute last.
    pub completed_per_minute: MinuteCounts,
    /// (sampled at, queued tasks) over the last hour, oldest first.
    pub queue_depth: Vec<(Millis, u64)>,
    /// (at, footprint) after each of the last backups and compactions, oldest first.
    pub store: Vec<(Millis, StorePoint)>,
}

/// Everything the dashboard shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub uptime_ms: u64,
    pub timestamp: Millis,
    pub status: Status,
    pub conditions: Vec<String>,
    pub agents: Vec<AgentView>,
    /// `None` when the task queue did not answer in time.
    pub queue: Option<TaskStats>,
    pub dead_letter_tasks: Option<Vec<Task>>,
    pub recent_completions: Vec<Completion>,
    pub throughput: Throughput,
    /// `None` when the storage report could not be had in time.
    pub storage: Option<StorageHealth>,
    pub actors: Vec<ChildRecord>,
    pub trends: Trends,
}

/// A snapshot as handed to every request it answers, with the HTTP layer's rendering of
/// it, made once for all of them.
#[derive(Debug)]
pub struct SharedSnapshot {
    snapshot: Snapshot,
    rendered: std::sync::OnceLock<bytes::Bytes>,
}

impl SharedSnapshot {
    pub fn new(snapshot: Snapshot) -> SharedSnapshot {
        SharedSnapshot {
            snapshot,
            rendered: std::sync::OnceLock::new(),
        }
    }

    /// The snapshot as `render` renders it: run once per snapshot, by whoever asks first.
    pub fn rendered(&self, render: impl FnOnce(&Snapshot) -> String) -> bytes::Bytes {
        self.rendered
            .get_or_init(|| bytes::Bytes::from(render(&self.snapshot)))
            .clone()
    }
}

impl std::ops::Deref for SharedSnapshot {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

pub enum DashboardMsg {
    Event(Arc<HubEvent>),
    SampleQueue,
    /// The store's footprint, measured just after a backup or a compaction.
    StoreMeasured(Millis, StorePoint),
    NewHour,
    /// A snapshot, built after the request arrived (shared with the requests waiting
    /// with it).
    Snapshot(RpcReplyPort<Arc<SharedSnapshot>>),
    /// Build a snapshot for the requests waiting.
    Build,
}

pub struct DashboardArgs {
    pub services: Arc<Services>,
    pub sample_interval: Duration,
}

pub struct DashboardState {
    services: Arc<Services>,
    started_at: Millis,
    completed: u64,
    failed: u64,
    tokens: u64,
    durations: Vec<u64>,
    recent: VecDeque<Completion>,
    /// Queued-task samples: the chart's series, whose last three feed "Queue growing".
    queue_depth: Samples<u64>,
    completed_per_minute: PerMinute,
    store_points: Samples<StorePoint>,
    /// Agents seen since start: when each went offline (`None`: online).
    seen: HashMap<String, Option<Millis>>,
    /// Requests for the next snapshot (a `Build` is on its way while any wait).
    waiting: Vec<RpcReplyPort<Arc<SharedSnapshot>>>,
    /// Kept for its subscriptions, which end when the state is dropped.
    _subscribed: Subscribed<DashboardMsg>,
}

pub struct Dashboard;

impl Actor for Dashboard {
    type Msg = DashboardMsg;
    type State = DashboardState;
    type Arguments = DashboardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DashboardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut subscribed =
            Subscribed::new(args.services.subscriptions.clone(), myself.clone(), |e| {
                counted(e).then(|| DashboardMsg::Event(e.clone()))
            });
        subscribed.add(Topic::Tasks);
        subscribed.add(Topic::Presence);
        subscribed.add(Topic::Backups);
        // A first sample at once: the queue-depth chart has a point before the first interval.
        let _ = myself.send_message(DashboardMsg::SampleQueue);
        myself.send_interval(args.sample_interval, || DashboardMsg::SampleQueue);
        myself.send_interval(Duration::from_secs(3600), || DashboardMsg::NewHour);
        let seen = args
            .services
            .agent_table
            .list()
            .into_iter()
            .map(|a| (a.agent_id, None))
            .collect();
        Ok(DashboardState {
            services: args.services,
            started_at: now_ms(),
            completed: 0,
            failed: 0,
            tokens: 0,
            durations: Vec::new(),
            recent: VecDeque::new(),
            queue_depth: Samples::new(TREND_SPAN_MS, QUEUE_SAMPLES_KEPT),
            completed_per_minute: PerMinute::new((TREND_SPAN_MS / 60_000) as usize),
            store_points: Samples::new(Millis::MAX, STORE_POINTS_KEPT),
            seen,
            waiting: Vec::new(),
            _subscribed: subscribed,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DashboardMsg::Event(event) => {
                state.record(&event);
                if let Some((at, moment)) = store_moment(&event) {
                    measure_store(state.services.clone(), myself, at, moment);
                }
            }
            DashboardMsg::SampleQueue => {
                if let Ok(stats) = state
                    .services
                    .task_queue
                    .call(TaskMsg::Stats, PART_DEADLINE)
                    .await
                {
                    state.queue_depth.push(now_ms(), stats.queued as u64);
                }
            }
            DashboardMsg::StoreMeasured(at, point) => state.store_points.push(at, point),
            DashboardMsg::NewHour => {
                state.completed = 0;
                state.failed = 0;
                state.tokens = 0;
                state.durations.clear();
            }
            DashboardMsg::Snapshot(reply) => {
                // Whatever arrives before the `Build` is handled shares its snapshot, which
                // is begun after all of them arrived.
                if state.waiting.is_empty() {
                    myself.send_message(DashboardMsg::Build)?;
                }
                state.waiting.push(reply);
            }
            DashboardMsg::Build => {
                let snapshot = Arc::new(SharedSnapshot::new(state.snapshot().await));
                for reply in state.waiting.drain(..) {
                    let _ = reply.send(snapshot.clone());
                }
            }
        }
        Ok(())
    }
}

/// Does the state keep anything of `event` ([`DashboardState::record`], [`store_moment`])?
/// The others (submissions, assignments, agent state changes: several per task) are not
/// sent to the actor at all.
fn counted(event: &HubEvent) -> bool {
    match event {
        HubEvent::Task { kind, .. } => matches!(
            kind,
            TaskEventKind::Completed | TaskEventKind::DeadLetter | TaskEventKind::Retried
        ),
        HubEvent::AgentJoined(_) | HubEvent::AgentLeft(_) => true,
        _ => store_moment(event).is_some(),
    }
}

/// A backup or a compaction that finished: its time and kind.
fn store_moment(event: &HubEvent) -> Option<(Millis, StoreMoment)> {
    match event {
        HubEvent::BackupComplete { timestamp, .. } => Some((*timestamp, StoreMoment::Backup)),
        HubEvent::CompactionComplete { timestamp, .. } => {
            Some((*timestamp, StoreMoment::Compaction))
        }
        _ => None,
    }
}

/// Measure the store off the actor (the backup actor answers the report and may be busy)
/// and hand the point back.
fn measure_store(
    services: Arc<Services>,
    myself: ActorRef<DashboardMsg>,
    at: Millis,
    moment: StoreMoment,
) {
    tokio::spawn(async move {
        let health = tokio::time::timeout(PART_DEADLINE * 5, services.storage_health()).await;
        if let Ok(Ok(h)) = health {
            let point = StorePoint {
                moment,
                size_on_disk: h.size_on_disk,
                live_bytes: h.live_bytes,
                fragmentation_ratio: h.fragmentation_ratio,
            };
            let _ = myself.send_message(DashboardMsg::StoreMeasured(at, point));
        }
    });
}

impl DashboardState {
    fn record(&mut self, event: &HubEvent) {
        let now = now_ms();
        match event {
            HubEvent::Task {
                kind: TaskEventKind::Completed,
                task,
            } => {
                self.completed += 1;
                self.completed_per_minute.add(now);
                // Saturates: an agent reports `tokens_used` up to 2^64 − 1.
                self.tokens = self.tokens.saturating_add(task.tokens_used.unwrap_or(0));
                let duration_ms = task.assigned_at.map_or(0, |t| now.saturating_sub(t));
                self.durations.push(duration_ms);
                self.recent.push_front(Completion {
                    task_id: task.id.clone(),
                    agent_id: task.assigned_to.clone(),
                    description: task.description.clone(),
                    duration_ms,
                    tokens_used: task.tokens_used,
                    completed_at: now,
                });
                self.recent.truncate(RECENT_KEEP);
            }
            HubEvent::Task {
                kind: TaskEventKind::DeadLetter,
                ..
            } => self.failed += 1,
            // A failure with retries left (not a retry from the dead-letter table).
            HubEvent::Task {
                kind: TaskEventKind::Retried,
                task,
            } if task.history.first().is_some_and(|h| h.event == "retry") => self.failed += 1,
            HubEvent::AgentJoined(entry) => {
                self.seen.insert(entry.agent_id.clone(), None);
            }
            HubEvent::AgentLeft(agent_id) => {
                self.seen.insert(agent_id.clone(), Some(now));
            }
            _ => {}
        }
    }

    async fn snapshot(&mut self) -> Snapshot {
        let now = now_ms();
        let s = &self.services;
        let agents = s.agent_table.list();
        let queue = s.task_queue.call(TaskMsg::Stats, PART_DEADLINE).await.ok();
        let dead_letter_tasks = s
            .task_queue
            .call(TaskMsg::DeadLetters, PART_DEADLINE)
            .await
            .ok();
        let assigned = s
            .task_queue
            .call(TaskMsg::Assigned, PART_DEADLINE)
            .await
            .unwrap_or_default();
        let storage = tokio::time::timeout(PART_DEADLINE, s.storage_health())
            .await
            .ok()
            .and_then(Result::ok);
        let actors = tokio::time::timeout(PART_DEADLINE, s.actors())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();

        self.seen
            .retain(|_, offline| offline.is_none_or(|t| now.saturating_sub(t) < OFFLINE_MEMORY_MS));
        let mut offline_agents: Vec<String> = self
            .seen
            .iter()
            .filter(|(id, offline)| offline.is_some() && !agents.iter().any(|a| &a.agent_id == *id))
            .map(|(id, _)| id.clone())
            .collect();
        offline_agents.sort();
        let stuck_after = s.settings.stuck_task_after.as_millis() as u64;
        let stuck_tasks = assigned
            .iter()
            .filter(|t| {
                t.status == TaskStatus::Assigned && now.saturating_sub(t.updated_at) > stuck_after
            })
            .map(|t| t.id.clone())
            .collect();
        let inputs = HealthInputs {
            now,
            offline_agents,
            queue_samples: self.queue_depth.last(3),
            completed_this_hour: self.completed,
            failed_this_hour: self.failed,
            stuck_tasks,
            storage: storage.as_ref().map(|h| StorageInputs {
                last_backup_at: h.last_backup_at,
                stale_after_ms: s.settings.backup_stale_after.as_millis() as u64,
                high_fragmentation: h.high_fragmentation,
                wasted_bytes: h.size_on_disk.saturating_sub(h.live_bytes),
                last_run_error: h.last_run.as_ref().and_then(|r| r.error.clone()),
                last_run_unverified: h
                    .last_run
                    .as_ref()
                    .filter(|r| r.ok && !r.verified)
                    .and_then(|r| r.backup_id.clone()),
                quarantined_records: h.quarantined_records,
            }),
            looping_actors: actors
                .iter()
                .filter(|a| {
                    a.crash_streak > 2 && a.status != crate::supervisor::ChildStatus::Running
                })
                .map(|a| (a.name.to_string(), a.crash_streak))
                .collect(),
        };
        let (status, conditions) = compute_health(&inputs);
        let avg = if self.durations.is_empty() {
            0
        } else {
            let total = self
                .durations
                .iter()
                .fold(0u64, |a, d| a.saturating_add(*d));
            total / self.durations.len() as u64
        };
        Snapshot {
            uptime_ms: now.saturating_sub(self.started_at),
            timestamp: now,
            status,
            conditions,
            agents,
            queue,
            dead_letter_tasks,
            recent_completions: self.recent.iter().cloned().collect(),
            throughput: Throughput {
                completed_last_hour: self.completed,
                avg_completion_ms: avg,
                total_tokens_hour: self.tokens,
            },
            storage,
            actors,
            trends: Trends {
                completed_per_minute: self.completed_per_minute.window(now),
                queue_depth: self.queue_depth.since(now),
                store: self.store_points.since(now),
            },
        }
    }
}
