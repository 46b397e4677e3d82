//! Domain events carried by the pubsub actor, and the topics they travel on.

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
        }
    }
}

/// Everything published on a topic.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// A supervised actor changed state (topic `actors`).
    Actor(ActorEvent),
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
