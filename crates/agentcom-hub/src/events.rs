//! Domain events carried by the pubsub actor, and the topics they travel on.

use std::sync::Arc;

use agentcom_core::message::Message;
use agentcom_core::task::Task;

use crate::presence::PresenceEntry;
use crate::supervisor::ChildRecord;

/// A pubsub topic: the original's five plus `actors` for supervision events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Presence,
    Messages,
    Tasks,
    /// `channel:<normalised name>`.
    Channel(String),
    Backups,
    Actors,
    /// The events of the topics a dashboard follows, one batch per flush interval (see
    /// [`crate::feed`]).
    DashboardFeed,
}

impl Topic {
    /// The topic's name as the original spelled it.
    pub fn name(&self) -> String {
        match self {
            Topic::Presence => "presence".into(),
            Topic::Messages => "messages".into(),
            Topic::Tasks => "tasks".into(),
            Topic::Channel(c) => format!("channel:{c}"),
            Topic::Backups => "backups".into(),
            Topic::Actors => "actors".into(),
            Topic::DashboardFeed => "dashboard_feed".into(),
        }
    }
}

/// Everything published on a topic.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// A supervised actor changed state (topic `actors`).
    Actor(ActorEvent),
    /// An agent identified (topic `presence`).
    AgentJoined(Arc<PresenceEntry>),
    /// An agent's presence ended (topic `presence`).
    AgentLeft(String),
    /// An agent changed its status (topic `presence`).
    StatusChanged(Arc<PresenceEntry>),
    /// A broadcast message (topic `messages`).
    Broadcast(Arc<Message>),
    /// A message published on a channel (topic `channel:<name>`).
    ChannelMessage {
        channel: String,
        message: Arc<Message>,
    },
    /// An agent newly subscribed to a channel (topic `channel:<name>`).
    ChannelSubscribed {
        channel: String,
        agent_id: String,
    },
    /// An agent's FSM changed state (topic `presence`; for dashboards).
    AgentState {
        agent_id: String,
        fsm_state: &'static str,
        current_task_id: Option<String>,
        unresponsive: bool,
        last_state_change: u64,
    },
    /// A task changed state (topic `tasks`): published once per real, durable transition.
    Task {
        kind: TaskEventKind,
        task: Arc<Task>,
    },
    /// Topic `backups`.
    BackupStarted {
        timestamp: u64,
    },
    BackupComplete {
        timestamp: u64,
        tables_backed_up: Vec<String>,
        backup_id: String,
        duration_ms: u64,
        verified: bool,
    },
    BackupFailed {
        timestamp: u64,
        error: String,
    },
    /// Topic `backups`: an online compaction (see [`crate::compaction`]).
    CompactionStarted {
        timestamp: u64,
    },
    CompactionComplete {
        timestamp: u64,
        run: crate::compaction::CompactionRun,
    },
    CompactionFailed {
        timestamp: u64,
        error: String,
    },
    /// Topic `dashboard_feed`: the events of one flush interval, in order.
    DashboardBatch(Arc<Vec<Arc<HubEvent>>>),
}

/// The task queue's events (reference §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEventKind {
    Submitted,
    Assigned,
    Completed,
    Retried,
    DeadLetter,
    Reclaimed,
}

impl TaskEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskEventKind::Submitted => "task_submitted",
            TaskEventKind::Assigned => "task_assigned",
            TaskEventKind::Completed => "task_completed",
            TaskEventKind::Retried => "task_retried",
            TaskEventKind::DeadLetter => "task_dead_letter",
            TaskEventKind::Reclaimed => "task_reclaimed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorEventKind {
    Crashed,
    Restarted,
}

impl ActorEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorEventKind::Crashed => "actor_crashed",
            ActorEventKind::Restarted => "actor_restarted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActorEvent {
    pub kind: ActorEventKind,
    pub record: ChildRecord,
}
