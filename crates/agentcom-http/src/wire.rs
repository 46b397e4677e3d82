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
    serde_json::to_value(Capabilities(caps)).unwrap_or_else(|_| Value::Array(Vec::new()))
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

/// The dashboard snapshot (reference §4.4), plus `actors` and the full `storage` report,
/// as JSON text. The parts that grow with the hub (agents, completions, actors, the queue
/// depth series) are serialised straight from typed views, without building a JSON tree:
/// a dashboard polling a hub with a hundred agents spent most of its time there.
pub fn snapshot(s: &agentcom_hub::dashboard::Snapshot) -> String {
    serde_json::to_string(&SnapshotOut::new(s)).expect("a snapshot serialises")
}

/// The `snapshot` frame of the dashboard socket: `{"type":"snapshot","data":…}`.
pub fn snapshot_frame(s: &agentcom_hub::dashboard::Snapshot) -> String {
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        data: SnapshotOut<'a>,
    }
    let frame = Frame {
        kind: "snapshot",
        data: SnapshotOut::new(s),
    };
    serde_json::to_string(&frame).expect("a snapshot serialises")
}

#[derive(serde::Serialize)]
struct SnapshotOut<'a> {
    uptime_ms: u64,
    timestamp: u64,
    health: HealthOut<'a>,
    agents: Vec<AgentOut<'a>>,
    queue: Option<Value>,
    dead_letter_tasks: Option<Vec<Value>>,
    recent_completions: Vec<CompletionOut<'a>>,
    throughput: Value,
    dets_health: Option<Value>,
    actors: Vec<ActorOut<'a>>,
    trends: TrendsOut,
}

#[derive(serde::Serialize)]
struct HealthOut<'a> {
    status: &'static str,
    conditions: &'a [String],
}

#[derive(serde::Serialize)]
struct AgentOut<'a> {
    agent_id: &'a str,
    name: &'a str,
    fsm_state: &'static str,
    current_task_id: &'a Option<String>,
    capabilities: Capabilities<'a>,
    flags: &'static [&'static str],
    connected_at: u64,
    last_state_change: u64,
}

/// Capabilities as sent at identify, serialised as [`normalized_capabilities`] says.
struct Capabilities<'a>(&'a Value);

impl serde::Serialize for Capabilities<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        #[derive(serde::Serialize)]
        struct Named<'a> {
            name: &'a str,
        }
        let list = self.0.as_array().map(Vec::as_slice).unwrap_or_default();
        let mut seq = serializer.serialize_seq(None)?;
        for c in list {
            match c {
                Value::String(name) => seq.serialize_element(&Named { name })?,
                Value::Object(_) => seq.serialize_element(c)?,
                _ => {}
            }
        }
        seq.end()
    }
}

#[derive(serde::Serialize)]
struct CompletionOut<'a> {
    task_id: &'a str,
    agent_id: &'a Option<String>,
    description: &'a str,
    duration_ms: u64,
    tokens_used: Option<u64>,
    completed_at: u64,
}

#[derive(serde::Serialize)]
struct ActorOut<'a> {
    name: &'a str,
    kind: &'a str,
    status: &'static str,
    restartable: bool,
    restarts: u32,
    crashes: u32,
    last_error: &'a Option<String>,
    started_at: u64,
    last_restart_at: Option<u64>,
}

#[derive(serde::Serialize)]
struct TrendsOut {
    completed_per_minute: Value,
    queue_depth: Vec<QueuePoint>,
    store: Vec<Value>,
}

#[derive(serde::Serialize)]
struct QueuePoint {
    at: u64,
    queued: u64,
}

impl<'a> SnapshotOut<'a> {
    fn new(s: &'a agentcom_hub::dashboard::Snapshot) -> SnapshotOut<'a> {
        let agents = s
            .agents
            .iter()
            .map(|a| AgentOut {
                agent_id: &a.agent_id,
                name: &a.name,
                fsm_state: a.fsm.state.as_str(),
                current_task_id: &a.fsm.current_task,
                capabilities: Capabilities(&a.capabilities),
                flags: if a.fsm.unresponsive {
                    &["unresponsive"]
                } else {
                    &[]
                },
                connected_at: a.connected_at,
                last_state_change: a.fsm.last_state_change,
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
        let dead_letter_tasks = s.dead_letter_tasks.as_ref().map(|tasks| {
            tasks
                .iter()
                .map(|t| json!({"id": t.id, "description": t.description, "last_error": t.last_error, "retry_count": t.retry_count, "created_at": t.created_at}))
                .collect()
        });
        let recent_completions = s
            .recent_completions
            .iter()
            .map(|c| CompletionOut {
                task_id: &c.task_id,
                agent_id: &c.agent_id,
                description: &c.description,
                duration_ms: c.duration_ms,
                tokens_used: c.tokens_used,
                completed_at: c.completed_at,
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
        let actors = s
            .actors
            .iter()
            .map(|r| ActorOut {
                name: r.name,
                kind: r.kind,
                status: r.status.as_str(),
                restartable: r.restartable,
                restarts: r.restarts,
                crashes: r.crashes,
                last_error: &r.last_error,
                started_at: r.started_at,
                last_restart_at: r.last_restart_at,
            })
            .collect();
        let t = &s.trends;
        let trends = TrendsOut {
            completed_per_minute: json!({"start": t.completed_per_minute.start, "minute_ms": agentcom_core::trends::MINUTE_MS, "counts": t.completed_per_minute.counts}),
            queue_depth: t
                .queue_depth
                .iter()
                .map(|(at, queued)| QueuePoint {
                    at: *at,
                    queued: *queued,
                })
                .collect(),
            store: t.store.iter().map(|(at, p)| json!({"at": at, "event": p.moment.as_str(), "size_on_disk": p.size_on_disk, "live_bytes": p.live_bytes, "fragmentation_ratio": p.fragmentation_ratio})).collect(),
        };
        SnapshotOut {
            uptime_ms: s.uptime_ms,
            timestamp: s.timestamp,
            health: HealthOut {
                status: s.status.as_str(),
                conditions: &s.conditions,
            },
            agents,
            queue,
            dead_letter_tasks,
            recent_completions,
            throughput: json!({
                "completed_last_hour": s.throughput.completed_last_hour,
                "avg_completion_ms": s.throughput.avg_completion_ms,
                "total_tokens_hour": s.throughput.total_tokens_hour,
            }),
            dets_health,
            actors,
            trends,
        }
    }
}
