//! The wire JSON of hub values: the one place where the reference's shapes are written.

use agentcom_core::analytics::AgentStats;
use agentcom_core::message::Message;
use agentcom_hub::presence::PresenceEntry;
use agentcom_store::{ChannelRecord, HistoryEntry, MailboxEntry};
use serde_json::{json, Value};

/// `MessageJSON`.
pub fn message(m: &Message) -> Value {
    json!({
        "id": m.id,
        "from": m.from,
        "to": m.to,
        "type": m.kind,
        "payload": m.payload,
        "reply_to": m.reply_to,
        "timestamp": m.timestamp,
    })
}

/// `MessageJSON` plus `"seq"`.
pub fn message_with_seq(m: &Message, seq: u64) -> Value {
    let mut v = message(m);
    v["seq"] = seq.into();
    v
}

pub fn mailbox_entry(e: &MailboxEntry) -> Value {
    message_with_seq(&e.message, e.seq)
}

/// `{"seq","message","stored_at"}`.
pub fn history_entry(e: &HistoryEntry) -> Value {
    json!({"seq": e.seq, "message": message(&e.message), "stored_at": e.stored_at})
}

/// The five fields of an agent in websocket lists and pushes.
pub fn agent_brief(p: &PresenceEntry) -> Value {
    json!({
        "agent_id": p.agent_id,
        "name": p.name,
        "status": p.status,
        "capabilities": p.capabilities,
        "connected_at": p.connected_at,
    })
}

/// `PresenceAgent` (route 2).
pub fn presence_agent(p: &PresenceEntry) -> Value {
    let mut v = agent_brief(p);
    v["fsm_state"] = p.fsm_state.clone().into();
    v
}

/// Capabilities normalised as the FSM shows them: strings become `{"name": s}`, objects
/// pass through, anything else is dropped.
pub fn normalized_capabilities(caps: &Value) -> Value {
    let list = caps.as_array().cloned().unwrap_or_default();
    Value::Array(
        list.into_iter()
            .filter_map(|c| match c {
                Value::String(s) => Some(json!({"name": s})),
                Value::Object(_) => Some(c),
                _ => None,
            })
            .collect(),
    )
}

/// `FsmAgent` (routes 21, 22).
pub fn fsm_agent(a: &agentcom_hub::agents::AgentView) -> Value {
    let flags: Vec<&str> = if a.fsm.unresponsive {
        vec!["unresponsive"]
    } else {
        vec![]
    };
    json!({
        "agent_id": a.agent_id,
        "fsm_state": a.fsm.state.as_str(),
        "current_task_id": a.fsm.current_task,
        "capabilities": normalized_capabilities(&a.capabilities),
        "flags": flags,
        "connected_at": a.connected_at,
        "name": a.name,
    })
}

pub fn channel_summary(c: &ChannelRecord) -> Value {
    json!({
        "name": c.name,
        "description": c.description,
        "subscriber_count": c.subscribers.len(),
        "created_at": c.created_at,
    })
}

pub fn channel_detail(c: &ChannelRecord) -> Value {
    json!({
        "name": c.name,
        "description": c.description,
        "subscribers": c.subscribers,
        "subscriber_count": c.subscribers.len(),
        "created_at": c.created_at,
        "created_by": c.created_by,
    })
}

pub fn agent_stats(s: &AgentStats) -> Value {
    json!({
        "agent_id": s.agent_id,
        "connected": s.connected,
        "idle_ms": s.idle_ms,
        "status": s.status,
        "messages_sent_24h": s.messages_sent_24h,
        "messages_received_24h": s.messages_received_24h,
        "messages_sent_this_hour": s.messages_sent_this_hour,
        "connection_time_24h_ms": s.connection_time_24h_ms,
        "last_active": s.last_active,
        "last_seen": s.last_seen,
        "total_connections": s.total_connections,
    })
}

/// `TaskJSON` (reference §5.1).
pub fn task(t: &agentcom_core::task::Task) -> Value {
    json!({
        "id": t.id,
        "description": t.description,
        "metadata": t.metadata,
        "priority": t.priority,
        "status": t.status.as_str(),
        "assigned_to": t.assigned_to,
        "assigned_at": t.assigned_at,
        "generation": t.generation,
        "retry_count": t.retry_count,
        "max_retries": t.max_retries,
        "needed_capabilities": t.needed_capabilities,
        "last_error": t.last_error,
        "complete_by": t.complete_by,
        "result": t.result,
        "tokens_used": t.tokens_used,
        "submitted_by": t.submitted_by,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "history": t.history.iter().map(|e| json!({"event": e.event, "timestamp": e.timestamp, "details": e.details})).collect::<Vec<_>>(),
    })
}
