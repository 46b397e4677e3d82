//! The agent websocket protocol as typed values (reference §3). The HTTP layer turns frames
//! into [`AgentRequest`]s and [`Outbound`] values into frames; nothing here is JSON text.

use std::sync::Arc;

use agentcom_core::message::Message;
use agentcom_core::task::Task;
use agentcom_store::{ChannelRecord, HistoryEntry};
use serde_json::Value;

use crate::events::HubEvent;
use crate::presence::PresenceEntry;

/// One understood frame from an agent.
#[derive(Debug, Clone)]
pub enum AgentRequest {
    Identify {
        agent_id: String,
        token: Option<String>,
        name: Option<String>,
        status: Option<String>,
        capabilities: Value,
    },
    Message {
        to: Option<String>,
        message_type: String,
        payload: Value,
        reply_to: Option<String>,
    },
    Status(String),
    ListAgents,
    ChannelSubscribe(String),
    ChannelUnsubscribe(String),
    ChannelPublish {
        channel: String,
        message_type: String,
        payload: Value,
        reply_to: Option<String>,
    },
    ChannelHistory {
        channel: String,
        limit: usize,
        since: u64,
    },
    ListChannels,
    Ping,
    TaskAccepted(String),
    TaskProgress(String),
    TaskComplete {
        task_id: String,
        generation: u64,
        result: Value,
        tokens_used: Option<u64>,
    },
    TaskFailed {
        task_id: String,
        generation: u64,
        error: Value,
    },
    TaskRecovering(String),
    TaskRejected {
        task_id: String,
        reason: Value,
    },
    /// A field has the wrong type (answered with `invalid_field`).
    Invalid {
        field: &'static str,
        message: String,
    },
    /// An unknown type, or a known one missing a required field.
    Unknown,
}

/// A frame from a dashboard.
#[derive(Debug, Clone)]
pub enum DashboardRequest {
    RequestSnapshot,
    RetryTask(String),
    /// Anything else: ignored, as the original did.
    Other,
}

/// Direct answers to an agent's requests.
#[derive(Debug, Clone)]
pub enum AgentReply {
    Identified {
        agent_id: String,
    },
    MessageSent {
        id: String,
    },
    StatusUpdated,
    Agents(Vec<PresenceEntry>),
    ChannelSubscribed {
        channel: String,
        already: bool,
    },
    ChannelUnsubscribed {
        channel: String,
    },
    ChannelPublished {
        channel: String,
        seq: u64,
        id: String,
    },
    ChannelHistory {
        channel: String,
        entries: Vec<HistoryEntry>,
    },
    Channels(Vec<ChannelRecord>),
    Pong {
        timestamp: u64,
    },
    TaskAck {
        task_id: String,
        status: &'static str,
    },
    TaskContinue {
        task_id: String,
        generation: u64,
    },
    TaskReassign {
        task_id: String,
    },
}

/// Unsolicited pushes to an agent.
#[derive(Debug, Clone)]
pub enum AgentPush {
    Message(Arc<Message>),
    ChannelMessage {
        channel: String,
        message: Arc<Message>,
    },
    ChannelAgentJoined {
        channel: String,
        agent_id: String,
    },
    AgentJoined(Arc<PresenceEntry>),
    AgentLeft(String),
    StatusChanged(Arc<PresenceEntry>),
    TaskAssign(Arc<Task>),
}

/// What a session asks its connection to send.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// `{"type":"error","error":code}`, with the offending field if any.
    Error {
        code: String,
        field: Option<&'static str>,
        message: Option<String>,
    },
    Reply(AgentReply),
    Push(AgentPush),
    /// Pubsub events for a dashboard, oldest first (one frame per flush interval): the
    /// same batch for every dashboard (see [`crate::feed`]).
    Events(Arc<Vec<Arc<HubEvent>>>),
    /// The dashboard snapshot.
    Snapshot(std::sync::Arc<crate::dashboard::SharedSnapshot>),
    /// The answer to a dashboard's `retry_task`.
    RetryResult {
        task_id: String,
        status: &'static str,
    },
    /// A frame over the caller's rate limit, which was not acted on: an `error` frame
    /// with `error: "rate_limited"` and when to try again.
    RateLimited {
        retry_after_ms: u64,
    },
}

impl Outbound {
    pub fn error(code: &str) -> Self {
        Outbound::Error {
            code: code.to_string(),
            field: None,
            message: None,
        }
    }
}
