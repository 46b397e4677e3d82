//! The wire JSON of hub values: the one place where the reference's shapes are written.

use agentcom_core::analytics::AgentStats;
use agentcom_core::message::Message;
use agentcom_hub::mailbox::Delivery;
use agentcom_hub::presence::PresenceEntry;
use agentcom_store::{ChannelRecord, HistoryEntry};
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

pub fn mailbox_entry(e: &Delivery) -> Value {
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

/// The dashboard snapshot (reference §4.4), plus `actors` and the full `storage` report.
pub fn snapshot(s: &agentcom_hub::dashboard::Snapshot) -> Value {
    let agents: Vec<Value> = s
        .agents
        .iter()
        .map(|a| {
            json!({
                "agent_id": a.agent_id,
                "name": a.name,
                "fsm_state": a.fsm.state.as_str(),
                "current_task_id": a.fsm.current_task,
                "capabilities": normalized_capabilities(&a.capabilities),
                "flags": if a.fsm.unresponsive { vec!["unresponsive"] } else { vec![] },
                "connected_at": a.connected_at,
                "last_state_change": a.fsm.last_state_change,
            })
        })
        .collect();
    let queue = s.queue.as_ref().map(|q| {
        let count = |status: agentcom_core::task::TaskStatus| q.by_status.iter().find(|(k, _)| *k == status).map_or(0, |(_, n)| *n);
        use agentcom_core::task::TaskStatus as S;
        json!({
            "by_status": {"queued": count(S::Queued), "assigned": count(S::Assigned), "completed": count(S::Completed)},
            "by_priority": (0..4u8).map(|p| (p.to_string(), Value::from(q.by_priority.iter().find(|(k, _)| *k == p).map_or(0, |(_, n)| *n)))).collect::<serde_json::Map<_, _>>(),
            "dead_letter": q.dead_letter,
        })
    });
    let dead: Option<Vec<Value>> = s.dead_letter_tasks.as_ref().map(|tasks| {
        tasks
            .iter()
            .map(|t| json!({"id": t.id, "description": t.description, "last_error": t.last_error, "retry_count": t.retry_count, "created_at": t.created_at}))
            .collect()
    });
    let completions: Vec<Value> = s
        .recent_completions
        .iter()
        .map(|c| {
            json!({"task_id": c.task_id, "agent_id": c.agent_id, "description": c.description, "duration_ms": c.duration_ms, "tokens_used": c.tokens_used, "completed_at": c.completed_at})
        })
        .collect();
    let dets_health = s.storage.as_ref().map(|h| {
        json!({
            "tables": h.tables.iter().map(|t| json!({"table": t.table, "status": "ok", "record_count": t.record_count, "file_size_bytes": t.logical_bytes, "fragmentation_ratio": null})).collect::<Vec<_>>(),
            "last_backup_at": h.last_backup_at,
            "next_backup_at": h.next_backup_at,
            "last_backup_results": h.last_run.as_ref().map(|r| json!({"at": r.at, "backup_id": r.backup_id, "status": if r.ok { "ok" } else { "error" }, "verified": r.verified, "error": r.error})),
            "health_status": h.health_status,
            "store": {"engine": h.engine, "size_on_disk": h.size_on_disk, "live_bytes": h.live_bytes, "fragmentation_ratio": h.fragmentation_ratio, "quarantined_records": h.quarantined_records},
        })
    });
    let actors: Vec<Value> = s
        .actors
        .iter()
        .map(|r| json!({"name": r.name, "kind": r.kind, "status": r.status.as_str(), "restartable": r.restartable, "restarts": r.restarts, "crashes": r.crashes, "last_error": r.last_error, "started_at": r.started_at, "last_restart_at": r.last_restart_at}))
        .collect();
    let t = &s.trends;
    let trends = json!({
        "completed_per_minute": {"start": t.completed_per_minute.start, "minute_ms": agentcom_core::trends::MINUTE_MS, "counts": t.completed_per_minute.counts},
        "queue_depth": t.queue_depth.iter().map(|(at, queued)| json!({"at": at, "queued": queued})).collect::<Vec<_>>(),
        "store": t.store.iter().map(|(at, p)| json!({"at": at, "event": p.moment.as_str(), "size_on_disk": p.size_on_disk, "live_bytes": p.live_bytes, "fragmentation_ratio": p.fragmentation_ratio})).collect::<Vec<_>>(),
    });
    json!({
        "uptime_ms": s.uptime_ms,
        "timestamp": s.timestamp,
        "health": {"status": s.status.as_str(), "conditions": s.conditions},
        "agents": agents,
        "queue": queue,
        "dead_letter_tasks": dead,
        "recent_completions": completions,
        "throughput": {
            "completed_last_hour": s.throughput.completed_last_hour,
            "avg_completion_ms": s.throughput.avg_completion_ms,
            "total_tokens_hour": s.throughput.total_tokens_hour,
        },
        "dets_health": dets_health,
        "actors": actors,
        "trends": trends,
    })
}
